//! `peer probe`: which candidate pair types work, and the round-trip time over them.
//!
//! With another peer (a probe or `peer join`) in the room, it connects to it, prints the
//! selected candidate pair and measures the data-channel RTT with `probe-ping` messages (which
//! probes answer with `probe-pong`). With `--self` it joins a private sub-room with two
//! internal peers twice, first with every candidate type allowed, then relay-only, and reports
//! both. Ends with `* probe-result host=.. srflx=.. relay=..` (`ok`, `fail` or `untested`).

use std::collections::BTreeMap;
use std::future::Future;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use peer::protocol::PeerId;
use peer::{ChannelKind, Peer, PeerEvent, PeerEvents, PeerOptions, SelectedPair};
use rand::Rng;

use super::{CommonArgs, Interrupted, Output, Stop};

/// The outcome of each candidate type: `ok`, `fail` or `untested`.
type Results = BTreeMap<&'static str, &'static str>;

const PINGS: u32 = 5;

pub(crate) async fn run(
    url: &str,
    self_test: bool,
    timeout: Duration,
    common: &CommonArgs,
    stop: &mut Stop,
) -> anyhow::Result<ExitCode> {
    let out = common.output();
    let mut results: Results = [
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
            match self_pair(&room_url, options, &out, mode, timeout, stop).await {
                Ok(pair) => record(&mut results, &pair),
                Err(err) if err.is::<Interrupted>() => return Err(err),
                Err(err) => {
                    out.notice(
                        "probe-failed",
                        &[("mode", mode.into()), ("error", err.to_string())],
                    );
                    if relay_only {
                        results.insert("relay", "fail");
                    }
                    failed = true;
                }
            }
        }
    } else {
        let outcome = stop
            .in_room(
                url,
                common,
                super::Leave::AtOnce,
                Some(timeout),
                async |peer, events| probe_remote(peer, events, timeout, &out, &mut results).await,
            )
            .await?;
        failed = !outcome?;
    }
    let fields: Vec<(&str, String)> = results.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    out.notice("probe-result", &fields);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Connects to the first other peer in the room, reports the pair and RTT, and answers its
/// pings for a moment; whether it worked.
async fn probe_remote(
    peer: &Peer,
    events: &mut PeerEvents,
    timeout: Duration,
    out: &Output,
    results: &mut Results,
) -> bool {
    match tokio::time::timeout(timeout, super::first_open_peer(events)).await {
        Ok(Ok(remote)) => {
            let rtt = ping(peer, events, &remote).await;
            let pair = super::selected_pair_eventually(peer, &remote).await;
            if let Some(pair) = &pair {
                out.selected_pair(remote.as_str(), pair, rtt);
                record(results, pair);
            }
            // Keep answering the other side's pings for a moment.
            let _ = tokio::time::timeout(Duration::from_secs(2), serve(peer, events)).await;
            pair.is_some()
        }
        Ok(Err(err)) => {
            out.notice("probe-failed", &[("error", err.to_string())]);
            false
        }
        Err(_) => {
            out.notice(
                "probe-failed",
                &[("error", "timeout: no peer connected".into())],
            );
            false
        }
    }
}

/// `work` until `deadline`: an error `timeout` after it, [`Interrupted`] on a signal.
async fn within<T>(
    stop: &mut Stop,
    deadline: tokio::time::Instant,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match stop.guard(tokio::time::timeout_at(deadline, work)).await {
        Ok(Ok(result)) => result,
        Ok(Err(_elapsed)) => Err(anyhow!("timeout")),
        Err(signal) => Err(signal.into()),
    }
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

/// Two internal peers connect to each other within `timeout`; returns A's selected pair. Both
/// leave the room whatever happens.
async fn self_pair(
    url: &str,
    options: PeerOptions,
    out: &Output,
    mode: &str,
    timeout: Duration,
    stop: &mut Stop,
) -> anyhow::Result<SelectedPair> {
    let deadline = tokio::time::Instant::now() + timeout;
    let (a, mut a_events) = within(stop, deadline, super::connect(url, options.clone())).await?;
    let (b, mut b_events) = match within(stop, deadline, super::connect(url, options)).await {
        Ok(b) => b,
        Err(err) => {
            stop.leave(a, super::Leave::AtOnce).await;
            return Err(err);
        }
    };
    // B answers A's pings in this same task, so both are still ours to leave with whatever
    // the outcome (a timeout included).
    let measured = within(stop, deadline, async {
        let measure = async {
            let remote = super::first_open_peer(&mut a_events).await?;
            let rtt = ping(&a, &mut a_events, &remote).await;
            Ok((rtt, super::selected_pair_eventually(&a, &remote).await))
        };
        tokio::select! {
            measured = measure => measured,
            () = serve(&b, &mut b_events) => Err(anyhow!("the second peer's connection ended")),
        }
    })
    .await;
    stop.leave(a, super::Leave::AtOnce).await;
    stop.leave(b, super::Leave::AtOnce).await;
    let (rtt, pair) = measured?;
    let Some(pair) = pair else {
        bail!("no selected candidate pair");
    };
    out.notice_values(
        "probe",
        &[
            ("mode", mode.into()),
            ("local", pair.local_type.as_str().into()),
            ("remote", pair.remote_type.as_str().into()),
            ("protocol", pair.protocol.as_str().into()),
            ("rtt_ms", super::rtt_value(rtt)),
        ],
    );
    Ok(pair)
}
