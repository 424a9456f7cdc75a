//! Interop with a WebRTC stack we did not write: the `peer` CLI and an aiortc (Python) peer,
//! `tests/aiortc/peer.py`, written from `docs/protocol.md` and the README alone, chat in one
//! room relay-only through our relay (aioice offers no loopback host candidates), in both join
//! orders and between two aiortc peers. The DTLS roles each side ends up with are the ones
//! `docs/protocol.md` states.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::{LoopbackRelay, Spawned};

use crate::peer_e2e::{
    Proc, Signaling, expect_chat, field, join, joined, reliable_channel_open,
    restartable_signaling, say, start_relay, start_signaling, start_signaling_with,
};

const WAIT: Duration = Duration::from_secs(30);

/// The virtualenv `scripts/install-test-deps.sh` makes for the aiortc peer.
fn python() -> PathBuf {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("aiortc/.venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-test-deps.sh",
        python.display()
    );
    python
}

/// An aiortc peer named `name` in the room at `url`, relay-only.
fn join_aiortc(url: &str, name: &str) -> Proc {
    join_aiortc_with(url, name, &[])
}

/// [`join_aiortc`] with more flags of `peer.py`.
fn join_aiortc_with(url: &str, name: &str, extra: &[&str]) -> Proc {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("aiortc/peer.py");
    let mut command = Command::new(python());
    command
        .arg(script)
        .args([
            "--url",
            url,
            "--name",
            name,
            "--relay-only",
            "--timeout",
            "90",
        ])
        .args(extra)
        .stderr(Stdio::inherit());
    Spawned::spawn(command, true)
}

/// Waits for `proc`'s `* joined` line.
fn aiortc_joined(proc: &mut Proc) {
    proc.wait_line(WAIT, |l| l.starts_with("* joined"));
}

/// Waits until the aiortc peer's `chat` channel is open and its pair is relayed on both ends;
/// returns its DTLS role (`client` or `server`).
fn aiortc_connected(proc: &mut Proc) -> String {
    proc.wait_seen(WAIT, |l| {
        l.starts_with("* channel-open") && field(l, "label") == Some("chat")
    });
    let pair = proc.wait_seen(WAIT, |l| l.starts_with("* selected-pair"));
    assert_eq!(field(&pair, "local"), Some("relay"), "{pair}");
    assert_eq!(field(&pair, "remote"), Some("relay"), "{pair}");
    let role = proc.wait_seen(WAIT, |l| l.starts_with("* dtls-role"));
    field(&role, "role").expect("role=").to_owned()
}

/// The CLI's chat channel opened on a relayed pair.
fn cli_connected(proc: &mut Proc) {
    proc.wait_seen(WAIT, reliable_channel_open);
    let pair = proc.wait_seen(WAIT, |l| l.starts_with("* selected-pair"));
    assert_eq!(field(&pair, "local"), Some("relay"), "{pair}");
}

/// Our relay, a signaling server handing out its credentials, and the URL of `room` there.
fn relay_room(room: &str) -> (LoopbackRelay, Signaling, String) {
    relay_room_with(room, &[])
}

/// [`relay_room`] with more `signaling` flags.
fn relay_room_with(room: &str, signaling_flags: &[&str]) -> (LoopbackRelay, Signaling, String) {
    let relay = start_relay();
    let signaling = start_signaling_with(Some(&relay), "127.0.0.1:0", signaling_flags);
    let url = signaling.room_url(room);
    (relay, signaling, url)
}

/// [`relay_room`] handing out TURN credentials of 10 s (the CLI gets fresh ones every 8 s),
/// with the CLI (`rusty`) joined to it: (relay, signaling, URL, CLI).
fn cli_in_a_short_ttl_room(room: &str) -> (LoopbackRelay, Signaling, String, Proc) {
    let (relay, signaling, url) = relay_room_with(room, &["--turn-ttl", "10s"]);
    let cli = joined(join(&url, "rusty", true));
    (relay, signaling, url, cli)
}

/// `a` says a line and `b` prints it as `NAME: LINE`, then the other way round.
fn chat_both_ways(a: (&mut Proc, &str), b: (&mut Proc, &str)) {
    say(a.0, "from the first");
    expect_chat(b.0, &format!("{}: from the first", a.1));
    say(b.0, "from the second");
    expect_chat(a.0, &format!("{}: from the second", b.1));
}

/// The CLI and aiortc in a room, `aiortc_first` or the CLI first, connected through the relay;
/// they chat both ways. Returns aiortc's DTLS role.
fn cli_and_aiortc(room: &str, aiortc_first: bool) -> String {
    let (_relay, _signaling, url) = relay_room(room);
    let (mut py, mut cli) = if aiortc_first {
        let mut py = join_aiortc(&url, "pyo");
        aiortc_joined(&mut py);
        (py, join(&url, "rusty", true))
    } else {
        let cli = joined(join(&url, "rusty", true));
        (join_aiortc(&url, "pyo"), cli)
    };
    let role = aiortc_connected(&mut py);
    cli_connected(&mut cli);
    chat_both_ways((&mut py, "pyo"), (&mut cli, "rusty"));
    role
}

/// The CLI is in the room first: it is impolite and only answers. The aiortc newcomer offers
/// (after waiting for an offer that does not come), the CLI answers `active`: aiortc is the
/// DTLS server.
#[test]
fn aiortc_joins_after_the_cli_and_they_chat_relay_only() {
    assert_eq!(cli_and_aiortc("aiortc-second", false), "server");
}

/// aiortc is in the room first: impolite, it offers at once, and so does the polite CLI
/// newcomer. Whichever offer wins, aiortc ends up the DTLS client: it answered the CLI's offer
/// `active`, or the CLI rolled its own back and answered aiortc's `passive`.
#[test]
fn the_cli_joins_after_aiortc_and_they_chat_relay_only() {
    assert_eq!(cli_and_aiortc("aiortc-first", true), "client");
}

/// A peer that ignores our max-message-size (aiortc made to) sends a line of 100,000 bytes
/// amid 20,000 short ones, while the CLI's output is not read: the long one is dropped (the
/// `rtc` core logs an error), and every short one is printed, in order. Before, the core's
/// drain of the stream failed at the long one and dropped what it had read before it in that
/// pass (up to 255 lines; third_party/rtc/PATCHES.md #2).
#[test]
fn a_message_over_the_size_limit_drops_nothing_else() {
    let (_relay, _signaling, url) = relay_room("oversized");
    let (_cli, cli_out) = crate::peer_e2e::join_unread_with(&url, "rusty", &["--relay-only"]);
    let mut py = join_aiortc_with(&url, "pyo", &["--ignore-max-message-size"]);
    aiortc_connected(&mut py);
    let count = 20_000;
    let mut lines: String = (0..count / 2).map(|n| format!("line {n:05}\n")).collect();
    lines.push_str(&"x".repeat(100_000));
    lines.push('\n');
    lines.extend((count / 2..count).map(|n| format!("line {n:05}\n")));
    py.stdin
        .as_mut()
        .expect("stdin")
        .write_all(lines.as_bytes())
        .expect("write stdin");
    // The CLI falls behind: its output is not read for a while.
    std::thread::sleep(Duration::from_secs(3));
    let rx = crate::peer_e2e::lines_of(cli_out, Duration::ZERO);
    let mut printed = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while printed.len() < count {
        let Some(wait) = deadline.checked_duration_since(std::time::Instant::now()) else {
            break;
        };
        let Ok(line) = rx.recv_timeout(wait) else {
            break;
        };
        if let Some(number) = line.strip_prefix("pyo: line ") {
            printed.push(number.parse::<usize>().expect("line number"));
        }
        assert!(!line.starts_with("pyo: xxx"), "the long line was printed");
    }
    let in_order: Vec<usize> = (0..count).collect();
    assert_eq!(printed.len(), count, "lines lost");
    assert_eq!(printed, in_order, "lines out of order");
}

/// Two aiortc peers: the client written from the docs interoperates with itself.
#[test]
fn two_aiortc_peers_chat_relay_only() {
    let (_relay, _signaling, url) = relay_room("aiortc-pair");
    let mut first = join_aiortc(&url, "first");
    aiortc_joined(&mut first);
    let mut second = join_aiortc(&url, "second");
    let roles = [aiortc_connected(&mut first), aiortc_connected(&mut second)];
    assert!(
        roles.contains(&"client".to_owned()) && roles.contains(&"server".to_owned()),
        "{roles:?}"
    );
    chat_both_ways((&mut first, "first"), (&mut second, "second"));
}

/// The signaling server restarts: neither session can be resumed, and both join again. aiortc
/// starts new connections (its peers are gone, as `docs/protocol.md` has a client do); the CLI
/// had kept its connection for the peer of the same name, and gives it up for aiortc's new one.
#[test]
fn after_a_signaling_restart_the_cli_and_aiortc_connect_again() {
    let relay = start_relay();
    let (signaling, listen, url) = restartable_signaling(Some(&relay), "aiortc-restart");
    let mut py = join_aiortc(&url, "pyo");
    aiortc_joined(&mut py);
    let mut cli = join(&url, "rusty", true);
    aiortc_connected(&mut py);
    cli_connected(&mut cli);
    chat_both_ways((&mut py, "pyo"), (&mut cli, "rusty"));

    drop(signaling.proc);
    let _restarted = start_signaling(Some(&relay), &listen);
    cli.wait_line(WAIT, |l| l.starts_with("* signaling-rejoined"));
    py.wait_line(WAIT, |l| l.starts_with("* joined"));
    py.wait_line(WAIT, |l| {
        l.starts_with("* connection-state") && field(l, "state") == Some("connected")
    });
    say(&mut py, "after the restart");
    expect_chat(&mut cli, "pyo: after the restart");
    say(&mut cli, "me too");
    expect_chat(&mut py, "rusty: me too");
}

/// aiortc cannot restart ICE: it answers the CLI's ICE-restart offers (onto fresh TURN
/// credentials, here every 8 s) with the ICE credentials it had, and goes on checking with the
/// CLI's old ones. ICE not connected again 2 s later, the CLI makes a new connection
/// (`docs/protocol.md`, "A new connection"), aiortc makes one for its offer, and the chat goes
/// on. It stopped at the first refresh.
#[test]
fn the_cli_makes_a_new_connection_when_aiortc_cannot_restart_ice() {
    let (_relay, _signaling, url, mut cli) = cli_in_a_short_ttl_room("aiortc-fresh");
    let mut py = join_aiortc(&url, "pyo");
    aiortc_connected(&mut py);
    cli_connected(&mut cli);
    for refresh in 1..=2 {
        cli.wait_line(WAIT, |l| {
            l.starts_with("* ice-restart") && field(l, "reason") == Some("fresh-credentials")
        });
        cli.wait_line(WAIT, |l| {
            l.starts_with("* connection-replaced")
                && field(l, "reason") == Some("ice-restart-refused")
        });
        // aiortc's new connection: its chat channel opens again.
        py.wait_line(WAIT, |l| {
            l.starts_with("* channel-open") && field(l, "label") == Some("chat")
        });
        say(&mut py, &format!("after refresh {refresh}"));
        expect_chat(&mut cli, &format!("pyo: after refresh {refresh}"));
        say(&mut cli, &format!("me too {refresh}"));
        expect_chat(&mut py, &format!("rusty: me too {refresh}"));
    }
}

/// Three in a room: the CLI and two aiortc peers, relay-only, fresh TURN credentials every 8 s.
/// At each refresh the CLI's connections to both are replaced (aiortc cannot restart ICE), at
/// about the same moment. Lines the CLI says all along reach both: while a connection was being
/// replaced, its lines were dropped for that peer, or went only to the first peer back.
#[test]
fn every_line_reaches_both_aiortc_peers_while_their_connections_are_replaced() {
    let (_relay, _signaling, url, mut cli) = cli_in_a_short_ttl_room("aiortc-three");
    let mut pya = join_aiortc(&url, "pya");
    aiortc_connected(&mut pya);
    let mut pyb = join_aiortc(&url, "pyb");
    aiortc_connected(&mut pyb);
    for _ in 0..2 {
        cli.wait_seen(WAIT, reliable_channel_open);
    }
    // 14 s of lines: past the first refresh (8 s in) and the replacements 5 s after it.
    let count = 70;
    for n in 0..count {
        say(&mut cli, &format!("line {n}"));
        std::thread::sleep(Duration::from_millis(200));
    }
    cli.wait_seen(WAIT, |l| l.starts_with("* connection-replaced"));
    for py in [&mut pya, &mut pyb] {
        py.wait_line(WAIT, |l| l == format!("rusty: line {}", count - 1));
        let missing: Vec<usize> = (0..count)
            .filter(|n| !py.seen.iter().any(|l| *l == format!("rusty: line {n}")))
            .collect();
        assert!(missing.is_empty(), "lines that did not arrive: {missing:?}");
    }
}
