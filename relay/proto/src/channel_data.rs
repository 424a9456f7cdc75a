//! ChannelData messages (RFC 8656 section 12.4): a hand-parsed 4-byte header in front of the
//! application data. This is the relay hot path: no allocation, no copies.

use std::ops::Range;

/// Size of the ChannelData header.
pub const CHANNEL_DATA_HEADER_LEN: usize = 4;
/// Lowest valid channel number.
pub const MIN_CHANNEL: u16 = 0x4000;
/// Highest valid channel number. RFC 8656 narrowed the range to 0x4000-0x4FFF, but RFC 5766
/// allowed 0x4000-0x7FFF and clients still use it (coturn's `turnutils_uclient` binds 0x7ABC):
/// we accept the old range. Both start with the bits `01`, so demultiplexing is unaffected.
pub const MAX_CHANNEL: u16 = 0x7FFF;

/// Why a ChannelData message is invalid (counted as malformed, dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelDataError {
    /// Fewer than 4 bytes.
    #[error("shorter than a ChannelData header")]
    TooShort,
    /// Channel number outside 0x4000-0x7FFF.
    #[error("channel number out of range")]
    BadChannel,
    /// The length field exceeds the bytes present.
    #[error("ChannelData length exceeds the packet")]
    Truncated,
}

/// True if the first byte starts a ChannelData message (first two bits `01`).
#[inline]
pub fn is_channel_data(first_byte: u8) -> bool {
    first_byte & 0xC0 == 0x40
}

/// True if `number` is a valid channel number.
#[inline]
pub fn is_valid_channel(number: u16) -> bool {
    (MIN_CHANNEL..=MAX_CHANNEL).contains(&number)
}

/// Parse a ChannelData message: the channel number and the byte range of the application data
/// inside `packet`. Trailing bytes (stream padding) are ignored.
#[inline]
pub fn parse(packet: &[u8]) -> Result<(u16, Range<usize>), ChannelDataError> {
    let Some(&[a, b, c, d]) = packet.get(..CHANNEL_DATA_HEADER_LEN) else {
        return Err(ChannelDataError::TooShort);
    };
    let number = u16::from_be_bytes([a, b]);
    if !is_valid_channel(number) {
        return Err(ChannelDataError::BadChannel);
    }
    let len = usize::from(u16::from_be_bytes([c, d]));
    if CHANNEL_DATA_HEADER_LEN + len > packet.len() {
        return Err(ChannelDataError::Truncated);
    }
    Ok((
        number,
        CHANNEL_DATA_HEADER_LEN..CHANNEL_DATA_HEADER_LEN + len,
    ))
}

/// Write a ChannelData header into `out[..4]` for `len` bytes of data (`len` <= 65535).
#[inline]
pub fn write_header(out: &mut [u8; CHANNEL_DATA_HEADER_LEN], number: u16, len: u16) {
    out[..2].copy_from_slice(&number.to_be_bytes());
    out[2..].copy_from_slice(&len.to_be_bytes());
}

/// Total size of a ChannelData message with `len` data bytes; padded to 4 on streams.
#[inline]
pub fn framed_len(len: usize, stream: bool) -> usize {
    let total = CHANNEL_DATA_HEADER_LEN + len;
    if stream { (total + 3) & !3 } else { total }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_and_rejects_invalid() {
        assert_eq!(
            parse(&[0x40, 0x00, 0x00, 0x02, 7, 8]).unwrap(),
            (0x4000, 4..6)
        );
        // Stream padding after the data is ignored.
        assert_eq!(
            parse(&[0x4F, 0xFF, 0x00, 0x01, 7, 0, 0, 0]).unwrap(),
            (0x4FFF, 4..5)
        );
        assert_eq!(parse(&[0x40, 0x00, 0x00]), Err(ChannelDataError::TooShort));
        assert_eq!(
            parse(&[0x80, 0x00, 0x00, 0x00]),
            Err(ChannelDataError::BadChannel)
        );
        assert_eq!(
            parse(&[0x3F, 0xFF, 0x00, 0x00]),
            Err(ChannelDataError::BadChannel)
        );
        assert_eq!(
            parse(&[0x40, 0x00, 0x00, 0x03, 1, 2]),
            Err(ChannelDataError::Truncated)
        );
        assert_eq!(parse(&[0x40, 0x01, 0x00, 0x00]).unwrap(), (0x4001, 4..4));
        // The RFC 5766 range, still used by coturn's clients.
        assert_eq!(parse(&[0x7A, 0xBC, 0x00, 0x00]).unwrap(), (0x7ABC, 4..4));
    }

    #[test]
    fn header_and_padding() {
        let mut h = [0u8; 4];
        write_header(&mut h, 0x4001, 5);
        assert_eq!(h, [0x40, 0x01, 0x00, 0x05]);
        assert_eq!(framed_len(5, false), 9);
        assert_eq!(framed_len(5, true), 12);
        assert_eq!(framed_len(4, true), 8);
        assert!(is_channel_data(0x40) && is_channel_data(0x7F));
        assert!(!is_channel_data(0x00) && !is_channel_data(0x80));
    }
}
