//! `peer join`: a line chat over the reliable data channel with every peer in the room.
//!
//! Lines read from stdin before any peer is connected are kept and sent to the first one.
//! When stdin closes the command leaves the room and exits, once those lines are sent.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::process::ExitCode;
use std::time::Duration;

use peer::protocol::PeerId;
use peer::{ChannelKind, IceRestartReason, Peer, PeerEvent, SelectedPair};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;

use super::{CommonArgs, Output};

/// How long after a relay-moved ICE restart the new selected pair is waited for.
const RESELECT_WAIT: Duration = Duration::from_secs(30);
/// How often the selected pair of a restarted connection is looked at.
const RESELECT_POLL: Duration = Duration::from_millis(200);
/// How long the last lines get to leave the send buffers before the room is left at the end
/// of stdin (closing the connection drops what is still buffered).
const LINGER: Duration = Duration::from_secs(1);

/// A connection that restarted ICE because its relay moved: its `selected-pair` line is
/// printed again once ICE selected a different pair.
struct Reselect {
    before: Option<SelectedPair>,
    until: Instant,
}

/// Whether `now` is another path than `before` (addresses or relay server).
fn moved(before: Option<&SelectedPair>, now: &SelectedPair) -> bool {
    before.is_none_or(|before| {
        before.local_address != now.local_address
            || before.remote_address != now.remote_address
            || before.relay_url != now.relay_url
    })
}

pub(crate) async fn run(url: &str, common: &CommonArgs) -> anyhow::Result<ExitCode> {
    let out = common.output();
    let (peer, mut events) = super::join(url, common).await?;
    let mut names: HashMap<PeerId, String> = HashMap::new();
    let mut pending: VecDeque<String> = VecDeque::new();
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut reselect: HashMap<PeerId, Reselect> = HashMap::new();
    let mut poll = tokio::time::interval(RESELECT_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                Ok(None) | Err(_) => {
                    stdin_open = false;
                    if pending.is_empty() {
                        break;
                    }
                }
            },
            event = events.recv() => {
                let Some(event) = event else { break };
                if !on_event(&peer, &out, &mut names, &mut pending, &mut reselect, event).await? {
                    // The server ended the session (`* signaling-closed`): a failure.
                    peer.close().await;
                    return Ok(ExitCode::FAILURE);
                }
                if !stdin_open && pending.is_empty() {
                    // Stdin ended before any peer was there: its lines are sent now.
                    break;
                }
            }
            _ = poll.tick(), if !reselect.is_empty() => {
                report_reselected(&peer, &out, &mut reselect).await;
            }
            _ = tokio::signal::ctrl_c() => {
                peer.close().await;
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    if !stdin_open {
        tokio::time::sleep(LINGER).await;
        out.notice("left", &[("room", peer.room().to_string())]);
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

/// Prints the `selected-pair` line of every restarted connection whose pair changed.
async fn report_reselected(peer: &Peer, out: &Output, reselect: &mut HashMap<PeerId, Reselect>) {
    let now = Instant::now();
    let ids: Vec<PeerId> = reselect.keys().cloned().collect();
    for id in ids {
        let pair = peer.selected_pair(&id).await.ok().flatten();
        let Some(entry) = reselect.get(&id) else {
            continue;
        };
        match pair {
            Some(pair) if moved(entry.before.as_ref(), &pair) => {
                out.selected_pair(id.as_str(), &pair, None);
                reselect.remove(&id);
            }
            _ if now >= entry.until => {
                reselect.remove(&id);
            }
            _ => {}
        }
    }
}

/// Handles one event; `false` when the session is over.
async fn on_event(
    peer: &Peer,
    out: &Output,
    names: &mut HashMap<PeerId, String>,
    pending: &mut VecDeque<String>,
    reselect: &mut HashMap<PeerId, Reselect>,
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
            reselect.remove(&id);
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
        PeerEvent::SignalingResumed { replayed, resent } => {
            let fields = [
                ("replayed", replayed.to_string()),
                ("resent", resent.to_string()),
            ];
            out.notice("signaling-resumed", &fields);
        }
        PeerEvent::SignalingRejoined { peer_id } => {
            out.notice("signaling-rejoined", &[("id", peer_id.to_string())]);
        }
        PeerEvent::IceServersUpdated => out.notice("ice-servers-updated", &[]),
        PeerEvent::IceRestart { peer: id, reason } => {
            out.notice(
                "ice-restart",
                &[("peer", id.to_string()), ("reason", reason.to_string())],
            );
            if reason == IceRestartReason::RelayMoved {
                // Report the new pair once ICE has moved off the old one.
                let before = peer.selected_pair(&id).await.ok().flatten();
                reselect.insert(
                    id,
                    Reselect {
                        before,
                        until: Instant::now() + RESELECT_WAIT,
                    },
                );
            }
        }
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
    fn a_new_pair_is_reported_after_a_relay_move() {
        let pair = |local: &str, relay: Option<&str>| SelectedPair {
            local_type: "relay".into(),
            remote_type: "relay".into(),
            local_address: local.into(),
            remote_address: "127.0.0.1:40001".into(),
            protocol: "udp".into(),
            rtt: None,
            relay_url: relay.map(Into::into),
        };
        let old = pair("127.0.0.1:40000", Some("turn:127.0.0.1:3478?transport=udp"));
        assert!(!moved(Some(&old), &old.clone()));
        assert!(moved(Some(&old), &pair("127.0.0.1:40002", None)));
        assert!(moved(
            Some(&old),
            &pair("127.0.0.1:40000", Some("turn:127.0.0.1:3479?transport=udp"))
        ));
        assert!(moved(None, &old));
    }

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
