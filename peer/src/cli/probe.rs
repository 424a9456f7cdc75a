//! `peer probe`: which candidate pair types work, and the round-trip time over them.
//!
//! With another peer (a probe or `peer join`) in the room, it connects to it, prints the
//! selected candidate pair and measures the data-channel RTT with `probe-ping` messages (which
//! probes answer with `probe-pong`). With `--self` it joins a private sub-room with two
//! internal peers twice, first with every candidate type allowed, then relay-only, and reports
//! both. Ends with `* probe-result host=.. srflx=.. relay=..` (`ok`, `fail` or `untested`).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use peer::protocol::PeerId;
use peer::{ChannelKind, Peer, PeerEvent, PeerEvents, PeerOptions, SelectedPair};
use rand::Rng;

use super::{CommonArgs, Output};

const PINGS: u32 = 5;

pub(crate) async fn run(
    url: &str,
    self_test: bool,
    timeout: Duration,
    common: &CommonArgs,
) -> anyhow::Result<ExitCode> {
    let out = common.output();
    let mut results: BTreeMap<&'static str, &'static str> = [
        ("host", "untested"),
        ("srflx", "untested"),
        ("relay", "untested"),
    ]
    .into();
    let mut failed = false;
    if self_test {
        let room_url = private_room(url);
        let mut modes = vec![("direct", false), ("relay", true)];
        if common.relay_only {
            modes.remove(0);
        }
        for (mode, relay_only) in modes {
            let mut options = common.options();
            options.relay_only = relay_only;
            // The direct mode must not fall back to the relay, or it proves nothing.
            options.no_turn = !relay_only;
            match tokio::time::timeout(timeout, self_pair(&room_url, options, &out, mode)).await {
                Ok(Ok(pair)) => record(&mut results, &pair),
                Ok(Err(err)) => {
                    out.notice(
                        "probe-failed",
                        &[("mode", mode.into()), ("error", err.to_string())],
                    );
                    if relay_only {
                        results.insert("relay", "fail");
                    }
                    failed = true;
                }
                Err(_) => {
                    out.notice(
                        "probe-failed",
                        &[("mode", mode.into()), ("error", "timeout".into())],
                    );
                    if relay_only {
                        results.insert("relay", "fail");
                    }
                    failed = true;
                }
            }
        }
    } else {
        let (peer, mut events) = super::join(url, common).await?;
        let peer = Arc::new(peer);
        let connected = tokio::time::timeout(timeout, super::first_open_peer(&mut events)).await;
        match connected {
            Ok(Ok(remote)) => {
                let rtt = ping(&peer, &mut events, &remote).await;
                match super::selected_pair_eventually(&peer, &remote).await {
                    Some(pair) => {
                        out.selected_pair(remote.as_str(), &pair, rtt);
                        record(&mut results, &pair);
                    }
                    None => failed = true,
                }
                // Keep answering the other side's pings for a moment.
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), serve(&peer, &mut events)).await;
            }
            Ok(Err(err)) => {
                out.notice("probe-failed", &[("error", err.to_string())]);
                failed = true;
            }
            Err(_) => {
                out.notice(
                    "probe-failed",
                    &[("error", "timeout: no peer connected".into())],
                );
                failed = true;
            }
        }
        if let Ok(peer) = Arc::try_unwrap(peer) {
            peer.close().await;
        }
    }
    let fields: Vec<(&str, String)> = results.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    out.notice("probe-result", &fields);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Marks the candidate types of a working pair as `ok`.
fn record(results: &mut BTreeMap<&'static str, &'static str>, pair: &SelectedPair) {
    for candidate_type in [&pair.local_type, &pair.remote_type] {
        let key = type_key(candidate_type);
        if key != "other" {
            results.insert(key, "ok");
        }
    }
}

/// The summary key a candidate type proves working. A peer-reflexive remote candidate (learnt
/// from a check before its trickled form arrived) proves nothing about the type it really is.
fn type_key(candidate_type: &str) -> &'static str {
    match candidate_type {
        "relay" => "relay",
        "srflx" => "srflx",
        "host" => "host",
        _ => "other",
    }
}

/// The same server, a fresh random room next to the given one.
fn private_room(url: &str) -> String {
    let suffix: u32 = rand::rng().random();
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let mut room_url = format!("{}-probe-{suffix:08x}", base.trim_end_matches('/'));
    if let Some(query) = query {
        room_url.push('?');
        room_url.push_str(query);
    }
    room_url
}

/// Answers `probe-ping` messages forever.
async fn serve(peer: &Peer, events: &mut PeerEvents) {
    while let Some(event) = events.recv().await {
        if let PeerEvent::Message { from, data, .. } = event {
            reply_if_ping(peer, &from, &data).await;
        }
    }
}

async fn reply_if_ping(peer: &Peer, from: &PeerId, data: &[u8]) {
    if let Some(seq) = std::str::from_utf8(data)
        .ok()
        .and_then(|text| text.strip_prefix("probe-ping "))
    {
        let _ = peer
            .send_text(from, ChannelKind::Reliable, &format!("probe-pong {seq}"))
            .await;
    }
}

/// The median data-channel round trip of a few pings, in milliseconds.
async fn ping(peer: &Peer, events: &mut PeerEvents, to: &PeerId) -> Option<f64> {
    let mut samples = Vec::new();
    for seq in 0..PINGS {
        let sent = Instant::now();
        if peer
            .send_text(to, ChannelKind::Reliable, &format!("probe-ping {seq}"))
            .await
            .is_err()
        {
            return None;
        }
        let want = format!("probe-pong {seq}");
        let waited = tokio::time::timeout(Duration::from_secs(3), async {
            while let Some(event) = events.recv().await {
                if let PeerEvent::Message { from, data, .. } = event {
                    if data.as_ref() == want.as_bytes() {
                        return true;
                    }
                    reply_if_ping(peer, &from, &data).await;
                }
            }
            false
        })
        .await;
        if matches!(waited, Ok(true)) {
            samples.push(sent.elapsed().as_secs_f64() * 1000.0);
        }
    }
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied()
}

/// Two internal peers connect to each other; returns A's selected pair.
async fn self_pair(
    url: &str,
    options: PeerOptions,
    out: &Output,
    mode: &str,
) -> anyhow::Result<SelectedPair> {
    let (a, mut a_events) = super::connect(url, options.clone()).await?;
    let (b, mut b_events) = super::connect(url, options).await?;
    let b = Arc::new(b);
    let responder = {
        let b = b.clone();
        tokio::spawn(async move { serve(&b, &mut b_events).await })
    };
    let remote = super::first_open_peer(&mut a_events).await?;
    let rtt = ping(&a, &mut a_events, &remote).await;
    let pair = super::selected_pair_eventually(&a, &remote).await;
    responder.abort();
    a.close().await;
    if let Ok(b) = Arc::try_unwrap(b) {
        b.close().await;
    }
    let Some(pair) = pair else {
        bail!("no selected candidate pair");
    };
    out.notice(
        "probe",
        &[
            ("mode", mode.to_owned()),
            ("local", pair.local_type.clone()),
            ("remote", pair.remote_type.clone()),
            ("protocol", pair.protocol.clone()),
            (
                "rtt_ms",
                rtt.map(|ms| format!("{ms:.2}"))
                    .unwrap_or_else(|| "unknown".into()),
            ),
        ],
    );
    Ok(pair)
}
