//! A TURN-over-TCP client that stops reading, through the real binary on loopback: it allocates,
//! binds a channel, and never reads again while its peer sends it 60 MB of large datagrams. The
//! relay holds at most `--stream-queue-bytes` for it (its queued-bytes gauge and its RSS), drops
//! and counts the rest, and another TCP client relaying at the same time loses nothing.

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::{Link, RelayProcess, TestClient, USER_ON_LOOPBACK, loopback_peer};

/// The default `--stream-queue-bytes`.
const QUEUE_BYTES: u64 = 128 * 1024;
/// Datagrams the slow client's peer sends, and their size.
const DATAGRAMS: usize = 1000;
const DATAGRAM: usize = 60_000;
/// Growth of the relay's RSS allowed while the slow client is flooded: the receive batches
/// (about 2 MiB per worker, touched only by large datagrams) and allocator slack. Without the
/// byte bound the 512-message queue alone would hold 512 x 60 KB = 30 MB.
const RSS_GROWTH_LIMIT_KIB: u64 = 12 * 1024;

/// Resident set size of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// A TCP connection to `server` with a small receive buffer, so the kernel absorbs little of
/// what the relay writes once the application stops reading.
fn small_buffer_tcp(server: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket
        .connect_timeout(&server.into(), Duration::from_secs(5))
        .expect("connect TCP port");
    let stream: TcpStream = socket.into();
    stream.set_nodelay(true).unwrap();
    stream
}

#[test]
fn a_tcp_client_that_stops_reading_costs_at_most_the_stream_queue_bytes() {
    let relay = RelayProcess::start_process(USER_ON_LOOPBACK);
    let tcp = relay.tcp.expect("tcp listener");

    // The slow client: allocate, bind a channel to its peer, then never read again.
    let mut slow = TestClient::with_link(
        Link::Tcp(small_buffer_tcp(tcp), Vec::new(), 0),
        tcp,
        "u",
        "p",
    );
    let flooder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let relayed = slow.allocate().expect("allocate over TCP");
    slow.channel_bind(0x4000, flooder.local_addr().unwrap())
        .expect("channel bind");
    let rss_before = rss_kib(relay.pid());

    // A healthy TCP client relaying round trips at the same time.
    let flooding = Arc::new(AtomicBool::new(true));
    let healthy = {
        let flooding = Arc::clone(&flooding);
        std::thread::spawn(move || {
            let mut c = TestClient::with_link(
                Link::Tcp(TcpStream::connect(tcp).unwrap(), Vec::new(), 0),
                tcp,
                "u",
                "p",
            );
            let peer = loopback_peer(Duration::from_secs(3));
            let relayed = c.allocate().expect("healthy allocate");
            c.channel_bind(0x4001, peer.local_addr().unwrap())
                .expect("healthy channel bind");
            let mut buf = [0u8; 2048];
            let (mut round_trips, mut lost, mut slowest) = (0u32, 0u32, Duration::ZERO);
            // Bounded: at most 100,000 round trips, and only while the flood runs.
            while flooding.load(Ordering::Acquire) && round_trips < 100_000 {
                let started = Instant::now();
                let payload = round_trips.to_be_bytes().repeat(50);
                c.send_channel(0x4001, &payload);
                match peer.recv_from(&mut buf) {
                    Ok((n, from)) if from == relayed && buf[..n] == payload[..] => {}
                    _ => {
                        lost += 1;
                        round_trips += 1;
                        continue;
                    }
                }
                peer.send_to(&payload, relayed).unwrap();
                match c.recv_channel(Duration::from_secs(3)) {
                    Some((0x4001, data)) if data == payload => {}
                    _ => lost += 1,
                }
                slowest = slowest.max(started.elapsed());
                round_trips += 1;
            }
            (round_trips, lost, slowest)
        })
    };

    // 60 MB at the slow client, paced so the relay's UDP receive buffer keeps up; watch the
    // relay's own gauge of the most bytes queued to one connection meanwhile.
    let mut peak_queued = 0;
    let payload = vec![0x5a; DATAGRAM];
    for i in 0..DATAGRAMS {
        flooder.send_to(&payload, relayed).unwrap();
        if i % 10 == 9 {
            std::thread::sleep(Duration::from_millis(2));
        }
        if i % 100 == 99 {
            peak_queued = peak_queued.max(relay.metric("relay_stream_queued_bytes_max"));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    peak_queued = peak_queued.max(relay.metric("relay_stream_queued_bytes_max"));
    let rss_after = rss_kib(relay.pid());
    flooding.store(false, Ordering::Release);
    let (round_trips, lost, slowest) = healthy.join().unwrap();
    let drops = relay.metric("relay_stream_queue_drops_total");
    let dropped_bytes = relay.metric("relay_stream_queue_dropped_bytes_total");
    eprintln!(
        "slow reader: sent {} B; relay queued at most {peak_queued} B for it (bound {QUEUE_BYTES}), \
         dropped {drops} messages ({dropped_bytes} B); RSS {rss_before} -> {rss_after} KiB; \
         healthy client: {round_trips} round trips, {lost} lost, slowest {slowest:?}",
        DATAGRAMS * DATAGRAM
    );
    assert!(
        peak_queued > 0 && peak_queued <= QUEUE_BYTES,
        "queued bytes for one connection: {peak_queued}"
    );
    assert!(
        drops > 0 && dropped_bytes >= drops * DATAGRAM as u64,
        "drops counted: {drops} messages, {dropped_bytes} B"
    );
    assert!(
        rss_after.saturating_sub(rss_before) <= RSS_GROWTH_LIMIT_KIB,
        "relay RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert!(
        round_trips >= 10,
        "the healthy client kept relaying: {round_trips}"
    );
    assert_eq!(lost, 0, "the healthy client lost round trips");
    // What was dropped is not billed: user `u` (both clients) pays for what its clients were
    // sent, the healthy client's 200-byte round trips and the slow client's queued share.
    let sent_to_slow = (DATAGRAMS as u64 - drops) * DATAGRAM as u64;
    let sent_to_healthy = u64::from(round_trips) * 200;
    // The workers publish the bill and the counter on their tick (200 ms), so one read of each
    // may straddle a tick: read both until they agree, for up to 5 s.
    let read_both = || {
        let billed = billed_to_client(&relay, "u");
        let counted = relay.metric("relay_bytes_relayed_total{direction=\"to_client\"}");
        (billed, counted)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut billed, mut counted) = read_both();
    while counted != billed && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        (billed, counted) = read_both();
    }
    assert!(
        billed <= sent_to_slow + sent_to_healthy,
        "billed {billed} B to the client, sent {sent_to_slow} + {sent_to_healthy} B"
    );
    assert_eq!(
        counted, billed,
        "the relayed-bytes counter agrees with the bill"
    );
    // The slow client is still connected (its queue was bounded, not the connection ended).
    drop(slow);
}

/// The `bytes_to_client` of `user` in the relay's `/usage` (published within a second).
fn billed_to_client(relay: &RelayProcess, user: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = relay.admin_get("/usage?since=10m");
        assert_eq!(status, 200, "{body}");
        let usage: serde_json::Value = serde_json::from_str(&body).expect("usage JSON");
        let billed = usage["users"]
            .as_array()
            .and_then(|users| users.iter().find(|u| u["user"] == user))
            .and_then(|u| u["bytes_to_client"].as_u64());
        if let Some(billed) = billed {
            return billed;
        }
        assert!(Instant::now() < deadline, "no usage of {user}: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
