//! `docs/protocol.md` cannot drift from the code: every JSON example parses into the protocol
//! types, and every error code is documented.

use signaling::protocol::{ClientMessage, HttpOpened, PollReply, ServerFrame};

const DOC: &str = include_str!("../../../docs/protocol.md");

fn json_blocks(doc: &str) -> Vec<&str> {
    doc.split("```json\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap_or("").trim())
        .collect()
}

#[test]
fn every_json_example_parses_into_the_protocol_types() {
    let blocks = json_blocks(DOC);
    assert!(blocks.len() >= 20, "only {} examples found", blocks.len());
    let (mut client, mut server) = (0, 0);
    for block in blocks {
        let value: serde_json::Value =
            serde_json::from_str(block).unwrap_or_else(|e| panic!("not JSON: {block}: {e}"));
        // The HTTP transports' shapes: an open's reply, a poll's reply, a batch of frames.
        if value.get("session").is_some() {
            let opened: HttpOpened = serde_json::from_value(value.clone()).expect(block);
            assert_eq!(serde_json::to_value(&opened).unwrap(), value, "{block}");
            continue;
        }
        if value.get("frames").is_some() {
            let reply: PollReply = serde_json::from_value(value.clone()).expect(block);
            assert_eq!(serde_json::to_value(&reply).unwrap(), value, "{block}");
            server += reply.frames.len();
            continue;
        }
        if value.is_array() {
            let batch: Vec<ClientMessage> = serde_json::from_value(value.clone()).expect(block);
            assert_eq!(serde_json::to_value(&batch).unwrap(), value, "{block}");
            client += batch.len();
            continue;
        }
        // Server frames carry `seq` (and a server-only type); `ack` carries `seq` too.
        if let Ok(frame) = serde_json::from_value::<ServerFrame>(value.clone()) {
            // Re-encoding keeps every documented field (no field the code does not know).
            assert_eq!(serde_json::to_value(&frame).unwrap(), value, "{block}");
            server += 1;
        } else {
            let message: ClientMessage =
                serde_json::from_value(value.clone()).unwrap_or_else(|e| {
                    panic!("neither a ServerFrame nor a ClientMessage: {block}: {e}")
                });
            assert_eq!(serde_json::to_value(&message).unwrap(), value, "{block}");
            client += 1;
        }
    }
    assert!(
        client >= 10 && server >= 10,
        "{client} client, {server} server examples"
    );
}

#[test]
fn every_server_sent_events_example_is_frames_with_their_seq_or_a_close_code() {
    let blocks: Vec<&str> = DOC
        .split("```text\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap_or(""))
        .filter(|block| block.contains("data: "))
        .collect();
    assert!(blocks.len() >= 2, "only {} SSE examples", blocks.len());
    let mut closes = 0;
    for block in blocks {
        for event in block.split("\n\n").filter(|e| !e.trim().is_empty()) {
            let field = |name: &str| {
                event
                    .lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
            };
            if event.trim_start().starts_with(':') {
                continue; // a keep-alive comment
            }
            let data = field("data").unwrap_or_else(|| panic!("no data in {event:?}"));
            match field("event") {
                Some("close") => {
                    let code: u16 = data.parse().expect("a close code");
                    assert!((1000..=1013).contains(&code));
                    closes += 1;
                }
                None => {
                    let frame: ServerFrame = serde_json::from_str(data).expect(data);
                    let id: u64 = field("id").expect("id").parse().expect("numeric id");
                    assert_eq!(id, frame.seq, "the event id is the seq: {event}");
                }
                Some(other) => panic!("undocumented event {other}"),
            }
        }
    }
    assert!(closes >= 1);
}

#[test]
fn every_error_code_is_documented() {
    // The codes as serde writes them; the list must match the enum (a new code fails here
    // until it is added below and to the document).
    use signaling::protocol::ErrorCode::*;
    for code in [
        UnsupportedVersion,
        InvalidMessage,
        BinaryNotSupported,
        MessageTooLarge,
        NotJoined,
        AlreadyJoined,
        InvalidRoomId,
        InvalidName,
        RoomFull,
        TooManyRooms,
        TooManySessions,
        UnknownPeer,
        RateLimited,
        Unauthorized,
        Forbidden,
        ResumeFailed,
        ReplayOverflow,
        SlowConsumer,
        Draining,
        Internal,
        Unavailable,
        TooManyConnections,
    ] {
        let needle = format!("| `{}` |", code.as_str());
        assert!(DOC.contains(&needle), "docs/protocol.md lacks {needle}");
    }
}
