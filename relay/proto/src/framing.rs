//! Message framing on stream transports (TCP, TLS): RFC 8656 section 12.5 / RFC 6062. STUN
//! messages carry their length in the header; ChannelData is padded to a multiple of 4 bytes.

use crate::channel_data;
use crate::message::HEADER_LEN;

/// Largest frame `stream_frame_len` can return (STUN header + 65535-byte body, rounded).
pub const MAX_FRAME_LEN: usize = HEADER_LEN + 65_536;

/// The stream does not carry STUN or ChannelData: close the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FramingError {
    /// The first two bits are neither `00` (STUN) nor `01` (ChannelData).
    #[error("stream data is neither STUN nor ChannelData")]
    UnknownFrame,
    /// A STUN length field that is not a multiple of 4.
    #[error("STUN length not a multiple of 4")]
    BadLength,
}

/// The length of the next frame at the start of `buf` (including ChannelData padding), or
/// `Ok(None)` if fewer than 4 bytes are buffered. Pass `buf[..len]` to
/// `Server::handle_client_packet` once that many bytes are there, then drop them from the
/// stream buffer.
pub fn stream_frame_len(buf: &[u8]) -> Result<Option<usize>, FramingError> {
    Ok(frame_lens(buf)?.map(|(_, on_stream)| on_stream))
}

/// The length of the message at the start of `buf` as a datagram carries it: like
/// [`stream_frame_len`], without ChannelData's stream padding. A client that bridges datagrams
/// to a stream (and back) pads to [`stream_frame_len`] and keeps this much.
pub fn message_len(buf: &[u8]) -> Result<Option<usize>, FramingError> {
    Ok(frame_lens(buf)?.map(|(message, _)| message))
}

/// The message's length, and its length on a stream.
fn frame_lens(buf: &[u8]) -> Result<Option<(usize, usize)>, FramingError> {
    let Some(&[b0, _, l0, l1]) = buf.get(..4) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([l0, l1]));
    match b0 >> 6 {
        0b00 if len % 4 != 0 => Err(FramingError::BadLength),
        0b00 => Ok(Some((HEADER_LEN + len, HEADER_LEN + len))),
        0b01 => Ok(Some((
            channel_data::framed_len(len, false),
            channel_data::framed_len(len, true),
        ))),
        _ => Err(FramingError::UnknownFrame),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_stun_and_padded_channel_data() {
        assert_eq!(stream_frame_len(&[0, 1, 0]), Ok(None));
        assert_eq!(stream_frame_len(&[0, 1, 0, 8]), Ok(Some(28)));
        assert_eq!(
            stream_frame_len(&[0, 1, 0, 7]),
            Err(FramingError::BadLength)
        );
        assert_eq!(stream_frame_len(&[0x40, 0, 0, 5]), Ok(Some(12)));
        assert_eq!(stream_frame_len(&[0x40, 0, 0, 0]), Ok(Some(4)));
        assert_eq!(
            stream_frame_len(&[0x80, 0, 0, 0]),
            Err(FramingError::UnknownFrame)
        );
        assert_eq!(stream_frame_len(&[0x40, 0, 0xFF, 0xFF]), Ok(Some(65_540)));
    }

    #[test]
    fn a_datagram_keeps_channel_data_unpadded() {
        assert_eq!(message_len(&[0x40, 0, 0, 5]), Ok(Some(9)));
        assert_eq!(message_len(&[0, 1, 0, 8]), Ok(Some(28)));
        assert_eq!(
            message_len(&[0x80, 0, 0, 0]),
            Err(FramingError::UnknownFrame)
        );
        assert_eq!(message_len(&[0x40, 0]), Ok(None));
    }
}
