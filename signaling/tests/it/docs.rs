//! `docs/protocol.md` cannot drift from the code: every JSON example parses into the protocol
//! types, and every error code is documented.

use signaling::protocol::{ClientMessage, ServerFrame};

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
    ] {
        let needle = format!("| `{}` |", code.as_str());
        assert!(DOC.contains(&needle), "docs/protocol.md lacks {needle}");
    }
}
