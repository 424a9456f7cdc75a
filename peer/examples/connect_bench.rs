//! Connection set-up time: from `Peer::connect` to the first data-channel message, for two
//! peers on loopback, direct and relay-only, median and p95 over N runs.
//!
//! Spawns the `signaling` and `relay` binaries from the same target directory (build them
//! first), then for each run starts two peers in a fresh room at the same instant; the time
//! is taken when the first peer receives the message the second sends as soon as its
//! reliable channel opens.
//!
//! ```text
//! cargo build --release -p signaling -p relay --bins
//! cargo run --release -p peer --example connect_bench -- 20
//! ```

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use peer::{ChannelKind, Peer, PeerEvent, PeerOptions};
use testkit::{LoopbackRelay, Spawned, bin_path};

const SECRET: &str = "bench-secret";

/// Starts `signaling` on loopback, handing out `turn_url` with the bench's secret; returns
/// the process and its HTTP address.
fn start_signaling(turn_url: &str) -> (Spawned, String) {
    let mut command = Command::new(bin_path("signaling"));
    command
        .args(["--listen", "127.0.0.1:0", "--turn-url", turn_url])
        .args(["--turn-secret", SECRET, "--rate-limit", "1000"])
        .stderr(Stdio::null());
    let mut proc = Spawned::spawn(command, false);
    let marker = "listening on http://";
    let line = proc.wait_line(Duration::from_secs(20), |l| l.starts_with(marker));
    let http = line[marker.len()..].trim().to_owned();
    (proc, http)
}

async fn one_run(url: &str, relay_only: bool) -> anyhow::Result<Duration> {
    let options = PeerOptions {
        relay_only,
        udp_addrs: vec!["127.0.0.1:0".into()],
        ..PeerOptions::default()
    };
    let start = Instant::now();
    let (a, b) = tokio::join!(
        Peer::connect(url, options.clone()),
        Peer::connect(url, options)
    );
    let ((a, mut a_events), (b, mut b_events)) = (a?, b?);
    let sender = tokio::spawn(async move {
        while let Some(event) = b_events.recv().await {
            if let PeerEvent::ChannelOpen {
                peer,
                kind: ChannelKind::Reliable,
            } = event
            {
                let _ = b.send_text(&peer, ChannelKind::Reliable, "first").await;
                break;
            }
        }
        b
    });
    let elapsed = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(event) = a_events.recv().await {
            if let PeerEvent::Message { .. } = event {
                return Ok(start.elapsed());
            }
        }
        anyhow::bail!("peer closed")
    })
    .await??;
    let b = sender.await?;
    a.close().await;
    b.close().await;
    Ok(elapsed)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let runs: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20);
    for (mode, relay_only) in [("direct", false), ("relay-only", true)] {
        // A fresh relay and signaling server per mode, so one mode's allocations cannot
        // affect the other.
        let relay = LoopbackRelay::start(SECRET, true, Stdio::null());
        let (_signaling, http) = start_signaling(&relay.turn_url());
        let mut times = Vec::with_capacity(runs);
        let mut failures = 0;
        for run in 0..runs {
            let url = format!("ws://{http}/ws/bench-{mode}-{run}");
            match one_run(&url, relay_only).await {
                Ok(elapsed) => times.push(elapsed),
                Err(err) => {
                    eprintln!("{mode} run {run} failed: {err}");
                    failures += 1;
                }
            }
        }
        if times.is_empty() {
            println!("{mode:>10}: runs={runs} failed={failures}");
            continue;
        }
        times.sort();
        println!(
            "{mode:>10}: runs={runs} failed={failures} median={:.1}ms p95={:.1}ms min={:.1}ms max={:.1}ms",
            percentile(&times, 0.5).as_secs_f64() * 1000.0,
            percentile(&times, 0.95).as_secs_f64() * 1000.0,
            times[0].as_secs_f64() * 1000.0,
            times[times.len() - 1].as_secs_f64() * 1000.0,
        );
    }
    Ok(())
}
