//! `peer join`: a line chat over the reliable data channel with every peer in the room.
//!
//! Lines read from stdin before any peer is connected are kept and sent to the first one.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::process::ExitCode;

use peer::protocol::PeerId;
use peer::{ChannelKind, Peer, PeerEvent};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{CommonArgs, Output};

pub(crate) async fn run(url: &str, common: &CommonArgs) -> anyhow::Result<ExitCode> {
    let out = common.output();
    let (peer, mut events) = Peer::connect(url, common.options()).await?;
    out.notice(
        "joined",
        &[
            ("room", peer.room().to_string()),
            ("id", peer.id().to_string()),
        ],
    );
    let mut names: HashMap<PeerId, String> = HashMap::new();
    let mut pending: VecDeque<String> = VecDeque::new();
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            line = stdin.next_line(), if stdin_open => match line {
                Ok(Some(line)) => {
                    if peer.connected_peers(ChannelKind::Reliable).is_empty() {
                        pending.push_back(line);
                    } else {
                        peer.broadcast_text(ChannelKind::Reliable, &line).await?;
                    }
                }
                Ok(None) | Err(_) => stdin_open = false,
            },
            event = events.recv() => {
                let Some(event) = event else { break };
                if !on_event(&peer, &out, &mut names, &mut pending, event).await? {
                    break;
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    peer.close().await;
    Ok(ExitCode::SUCCESS)
}

/// The chat text of a message, if it is one. Chat is the reliable (ordered) channel, labelled
/// `reliable` by this SDK and `chat` by the browser demo; the demo's other channels (`canvas`,
/// `cursor`) are unordered and carry JSON drawing state, which is not chat.
fn chat_text(kind: ChannelKind, data: &[u8]) -> Option<Cow<'_, str>> {
    (kind == ChannelKind::Reliable).then(|| String::from_utf8_lossy(data))
}

fn display(names: &HashMap<PeerId, String>, peer: &PeerId) -> String {
    names.get(peer).cloned().unwrap_or_else(|| peer.to_string())
}

/// Handles one event; `false` when the session is over.
async fn on_event(
    peer: &Peer,
    out: &Output,
    names: &mut HashMap<PeerId, String>,
    pending: &mut VecDeque<String>,
    event: PeerEvent,
) -> anyhow::Result<bool> {
    match event {
        PeerEvent::PeerJoined { peer: id, name } => {
            if let Some(name) = &name {
                names.insert(id.clone(), name.clone());
            }
            out.notice(
                "peer-joined",
                &[("id", id.to_string()), ("name", name.unwrap_or_default())],
            );
        }
        PeerEvent::PeerLeft { peer: id, reason } => {
            out.notice(
                "peer-left",
                &[
                    ("id", id.to_string()),
                    ("name", display(names, &id)),
                    ("reason", format!("{reason:?}").to_lowercase()),
                ],
            );
            names.remove(&id);
        }
        PeerEvent::PeerRenamed { old, new } => {
            if let Some(name) = names.remove(&old) {
                names.insert(new.clone(), name);
            }
            out.notice(
                "peer-renamed",
                &[("old", old.to_string()), ("new", new.to_string())],
            );
        }
        PeerEvent::ChannelOpen { peer: id, kind } => {
            out.notice(
                "channel-open",
                &[("peer", id.to_string()), ("kind", kind.to_string())],
            );
            if kind == ChannelKind::Reliable {
                while let Some(line) = pending.pop_front() {
                    peer.send_text(&id, ChannelKind::Reliable, &line).await?;
                }
                if let Some(pair) = super::selected_pair_eventually(peer, &id).await {
                    out.selected_pair(id.as_str(), &pair, None);
                }
            }
        }
        PeerEvent::ChannelClosed { peer: id, kind } => {
            out.notice(
                "channel-closed",
                &[("peer", id.to_string()), ("kind", kind.to_string())],
            );
        }
        PeerEvent::Message {
            from, kind, data, ..
        } => {
            let Some(text) = chat_text(kind, &data) else {
                tracing::debug!(%from, %kind, bytes = data.len(), "non-chat message not shown");
                return Ok(true);
            };
            if out.json {
                println!(
                    "{}",
                    serde_json::json!({"event": "message", "from": from.as_str(), "name": display(names, &from), "text": text})
                );
            } else {
                println!("{}: {}", display(names, &from), text);
            }
        }
        PeerEvent::ConnectionState { peer: id, state } => {
            out.notice(
                "connection-state",
                &[
                    ("peer", id.to_string()),
                    ("state", format!("{state:?}").to_lowercase()),
                ],
            );
        }
        PeerEvent::SignalingReconnecting { attempt, delay } => out.notice(
            "signaling-reconnecting",
            &[
                ("attempt", attempt.to_string()),
                ("delay_ms", delay.as_millis().to_string()),
            ],
        ),
        PeerEvent::SignalingResumed { replayed } => {
            out.notice("signaling-resumed", &[("replayed", replayed.to_string())]);
        }
        PeerEvent::SignalingRejoined { peer_id } => {
            out.notice("signaling-rejoined", &[("id", peer_id.to_string())]);
        }
        PeerEvent::IceServersUpdated => out.notice("ice-servers-updated", &[]),
        PeerEvent::SignalingClosed { message } => {
            out.notice("signaling-closed", &[("reason", message)]);
            return Ok(false);
        }
        PeerEvent::Broadcast { from, data } => {
            out.notice(
                "broadcast",
                &[("from", from.to_string()), ("data", data.to_string())],
            );
        }
        PeerEvent::Error { peer: id, message } => {
            eprintln!(
                "warning: {}{message}",
                id.map(|id| format!("peer {id}: ")).unwrap_or_default()
            );
        }
        _ => {}
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_reliable_channel_is_chat() {
        assert_eq!(
            chat_text(ChannelKind::Reliable, b"hello").as_deref(),
            Some("hello")
        );
        let stroke = br#"{"type":"stroke","points":[[1,2]]}"#;
        assert_eq!(chat_text(ChannelKind::Unreliable, stroke), None);
    }
}
