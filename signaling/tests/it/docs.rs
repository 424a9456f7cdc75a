//! `docs/protocol.md` cannot drift from the code: every JSON example parses into the protocol
//! types, every error code is documented with its close code and client rule, and the client
//! rules the document states are the ones `protocol.rs` and the JS client hold.

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

/// The rows of the "Error codes" table: code, socket column, client column.
fn error_rows() -> Vec<(String, String, String)> {
    let section = DOC
        .split("## Error codes")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("an Error codes section");
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
            let n = cells.len();
            (
                cells[0].trim_matches('`').to_owned(),
                cells[n - 2].to_owned(),
                cells[n - 1].to_owned(),
            )
        })
        .collect()
}

#[test]
fn the_error_table_states_each_codes_close_code_and_client_rule() {
    use signaling::protocol::ErrorCode;
    let rows = error_rows();
    assert_eq!(rows.len(), ErrorCode::ALL.len(), "one row per code");
    for code in ErrorCode::ALL {
        let (_, socket, client) = rows
            .iter()
            .find(|(c, _, _)| c == code.as_str())
            .unwrap_or_else(|| panic!("no row for {code}"));
        let documented_close = socket
            .strip_prefix("closed, ")
            .map(|rest| rest[..4].parse::<u16>().expect("a close code"));
        assert_eq!(documented_close, code.close_code(), "{code}: {socket}");
        assert_eq!(client, code.retry_class().as_str(), "{code}");
    }
}

#[test]
fn the_client_rules_section_states_the_rules_the_clients_follow() {
    use signaling::protocol::client_rules::*;
    let section = DOC
        .split("## Client rules")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Client rules section");
    for row in [
        format!(
            "| first reconnect delay | {} ms |",
            BACKOFF_INITIAL.as_millis()
        ),
        format!("| longest delay | {} ms |", BACKOFF_MAX.as_millis()),
        format!(
            "| jitter | each delay is scaled by a random factor in [{}, 1] |",
            1.0 - BACKOFF_JITTER
        ),
        format!(
            "| acknowledge (`ack`) | after {ACK_EVERY} unacknowledged frames, or {} ms after",
            ACK_DELAY.as_millis()
        ),
        format!(
            "| confirm (`ping`) | after {CONFIRM_EVERY} numbered frames (`cseq`) since the last `ping`, or {} ms after",
            CONFIRM_DELAY.as_millis()
        ),
        format!(
            "| stats every | {} ms per connected peer",
            STATS_EVERY.as_millis()
        ),
        format!(
            "| resend an offer | {} ms after it was sent with no answer yet",
            OFFER_RESEND.as_millis()
        ),
    ] {
        assert!(section.contains(&row), "the section lacks {row}");
    }
}

#[test]
fn the_js_client_follows_the_same_client_rules() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../web-demo/signaling-client.js"
    );
    let output = testkit::run_ok(
        std::process::Command::new("node").args([
            "--input-type=module",
            "-e",
            &format!(
                "const m = await import({script:?}); console.log(JSON.stringify(m.CLIENT_RULES));"
            ),
        ]),
        "node (scripts/test.sh installs it) running the JS client's table",
    );
    let js: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let rust = serde_json::to_value(signaling::protocol::client_rules::ClientRules::v1()).unwrap();
    assert_eq!(js, rust, "web-demo/signaling-client.js CLIENT_RULES");
}
