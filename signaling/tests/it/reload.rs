//! SIGHUP reloads of the real binary's `--config` file: JWT and TURN secrets, per-address
//! limits, the in-process relay's part (`--with-relay`); an invalid file is refused (counted)
//! and the configuration in force stays. (Certificates: `tls.rs`; the relay's own reload:
//! the relay's `reload.rs`.)

use std::path::Path;
use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
use signaling::auth::Claims;
use signaling::protocol::{ClientMessage, ErrorCode, SessionInfo};
use tokio_tungstenite::tungstenite;

use crate::support::{Client, Server, metric_reaches};

/// A token for `room` signed with `secret`, valid for five minutes.
fn token(secret: &str, room: &str) -> String {
    let claims = Claims {
        room: room.into(),
        name: None,
        exp: get_current_timestamp() + 300,
    };
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode token")
}

fn join_with_token(room: &str, token: String) -> ClientMessage {
    ClientMessage::Join {
        id: Some(1),
        versions: vec![1],
        room: Some(room.into()),
        name: None,
        token: Some(token),
    }
}

/// Sends SIGHUP to the first node.
fn hangup(server: &Server) {
    // SAFETY: kill(2) on the PID of a child this test spawned.
    let rc = unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGHUP) };
    assert_eq!(rc, 0);
}

const OK: &str = "signaling_config_reloads_total{result=\"ok\"}";
const REFUSED: &str = "signaling_config_reloads_total{result=\"refused\"}";

/// Joins `room` on the first node with a token signed by `jwt`.
async fn join(server: &Server, room: &str, jwt: &str) -> (Client, SessionInfo) {
    let mut client = Client::connect(&server.ws_first("/ws")).await;
    client.send(&join_with_token(room, token(jwt, room))).await;
    let info = client.expect_welcome().await;
    (client, info)
}

/// The TURN credential of a welcome, checked against `secret`.
fn signed_by(info: &SessionInfo, secret: &str) -> bool {
    let turn = info
        .ice_servers
        .iter()
        .find(|s| s.username.is_some())
        .expect("a TURN entry");
    let username = turn.username.as_deref().unwrap();
    turn.credential.as_deref() == Some(&testkit::rest_password(secret.as_bytes(), username))
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// Rewrites the config file with `text` and sends SIGHUP, as an operator reloads.
fn reload(server: &Server, file: &Path, text: &str) {
    write(file, text);
    hangup(server);
}

#[tokio::test]
async fn sighup_swaps_secrets_and_limits_and_sessions_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("signaling.toml");
    let base = "turn-url = [\"turn:127.0.0.1:3478\"]\n";
    write(
        &file,
        &format!("{base}jwt-secret = \"old-jwt\"\nturn-secret = [\"old-turn\"]\n"),
    );
    let server = Server::start_process(&["--config", file.to_str().unwrap()]);
    let (mut a, info) = join(&server, "reload", "old-jwt").await;
    assert!(signed_by(&info, "old-turn"));

    reload(
        &server,
        &file,
        &format!("{base}jwt-secret = \"new-jwt\"\nturn-secret = [\"new-turn\", \"old-turn\"]\n"),
    );
    metric_reaches(&server, OK, 1, Duration::from_secs(5)).await;

    // The old JWT secret no longer verifies; the new one does, and the first TURN secret
    // signs new credentials.
    let mut stale = Client::connect(&server.ws_first("/ws")).await;
    stale
        .send(&join_with_token("reload", token("old-jwt", "reload")))
        .await;
    stale.expect_error(ErrorCode::Unauthorized).await;
    let (_b, info) = join(&server, "reload", "new-jwt").await;
    assert!(signed_by(&info, "new-turn"));
    // The session from before the reload goes on.
    assert!(matches!(
        a.recv_message().await,
        signaling::protocol::ServerMessage::PeerJoined { .. }
    ));

    // A lower per-address limit applies to the next connection.
    reload(
        &server,
        &file,
        &format!(
            "{base}jwt-secret = \"new-jwt\"\nturn-secret = [\"new-turn\"]\nmax-connections-per-ip = 1\n"
        ),
    );
    metric_reaches(&server, OK, 2, Duration::from_secs(5)).await;
    match Client::try_connect(&server.ws_first("/ws"), &[]).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 429),
        Err(other) => panic!("expected 429, got {other:?}"),
        Ok(_) => panic!("a second connection from the address was admitted"),
    }
    assert_eq!(server.metric(REFUSED).await, 0);
}

#[tokio::test]
async fn an_invalid_configuration_is_refused_and_the_one_in_force_stays() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("signaling.toml");
    write(&file, "jwt-secret = \"kept\"\n");
    let server = Server::start_process(&["--config", file.to_str().unwrap()]);
    let bad = [
        "jwt-secret = \"other\"\nrate-limit = 0\n", // fails validation
        "jwt-secret = \"other\n",                   // not TOML
        "jwt-secret = \"other\"\nno-such-flag = 1\n", // unknown key
        "jwt-secret = \"other\"\nmax-sessions-per-ip = \"many\"\n", // bad value
    ];
    for (n, text) in bad.iter().enumerate() {
        reload(&server, &file, text);
        metric_reaches(&server, REFUSED, n as u64 + 1, Duration::from_secs(5)).await;
        assert_eq!(server.metric(OK).await, 0);
        let _kept = join(&server, &format!("room{n}"), "kept").await;
        let mut other = Client::connect(&server.ws_first("/ws")).await;
        other.send(&join_with_token("x", token("other", "x"))).await;
        other.expect_error(ErrorCode::Unauthorized).await;
    }
}

#[cfg(feature = "with-relay")]
/// `--with-relay`: the in-process relay reloads with the server, and a refusal of its part
/// refuses the whole reload.
#[tokio::test]
async fn the_in_process_relay_reloads_with_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("signaling.toml");
    /// The config of TURN secret `secret` whose relay-arg list is the relay's admin port (on
    /// every list, not the default: another program may want it), then `more`.
    fn config(secret: &str, more: &[&str]) -> String {
        let args: Vec<String> = std::iter::once("--admin-listen=127.0.0.1:0")
            .chain(more.iter().copied())
            .map(|arg| format!("\"{arg}\""))
            .collect();
        format!(
            "turn-secret = [\"{secret}\"]\nrelay-arg = [{}]\n",
            args.join(", ")
        )
    }
    write(&file, &config("first", &[]));
    let server = Server::start_process(&[
        "--with-relay",
        "--relay-listen",
        "127.0.0.1:0",
        "--config",
        file.to_str().unwrap(),
    ]);
    let (_a, info) = Client::join(&server.ws_first("/ws"), Some("relay")).await;
    assert!(signed_by(&info, "first"));

    reload(&server, &file, &config("second", &["--user-quota=3"]));
    metric_reaches(&server, OK, 1, Duration::from_secs(5)).await;
    metric_reaches(
        &server,
        "relay_config_reloads_total",
        1,
        Duration::from_secs(5),
    )
    .await;
    let (_b, info) = Client::join(&server.ws_first("/ws"), Some("relay")).await;
    assert!(signed_by(&info, "second"));

    // The relay refuses its part: nothing is applied.
    reload(&server, &file, &config("third", &["--user-quota=0"]));
    metric_reaches(&server, REFUSED, 1, Duration::from_secs(5)).await;
    assert_eq!(server.metric("relay_config_reloads_total").await, 1);
    assert_eq!(server.metric(RELAY_REFUSED).await, 1);
    let (_c, info) = Client::join(&server.ws_first("/ws"), Some("relay")).await;
    assert!(signed_by(&info, "second"), "the secret in force stays");

    // A relay flag that does not parse is the relay's refusal too, counted by both.
    reload(&server, &file, &config("third", &["--user-quota=abc"]));
    metric_reaches(&server, REFUSED, 2, Duration::from_secs(5)).await;
    assert_eq!(server.metric(RELAY_REFUSED).await, 2);
    assert_eq!(server.metric("relay_config_reloads_total").await, 1);
}

#[cfg(feature = "with-relay")]
const RELAY_REFUSED: &str = "relay_config_reloads_refused_total";

#[cfg(feature = "with-relay")]
/// A `--relay-arg` change is not told as applied by the server: its line hands it to the
/// in-process relay, whose own warning names what needs a restart (`--relay-ports`).
#[test]
fn a_relay_arg_change_is_told_as_handed_on_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("signaling.toml");
    let config = |ports: &str| {
        format!("relay-arg = [\"--admin-listen=127.0.0.1:0\", \"--relay-ports={ports}\"]\n")
    };
    write(&file, &config("46100-46199"));
    let (stdout, stderr) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_signaling"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "none",
            "--with-relay",
        ])
        .args([
            "--relay-listen",
            "127.0.0.1:0",
            "--config",
            file.to_str().unwrap(),
        ])
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("spawn");
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    let listening = testkit::wait_until(Duration::from_secs(20), || {
        read(&stdout).contains("listening on").then_some(())
    });
    let logs = listening.and_then(|()| {
        write(&file, &config("46100-46150"));
        // SAFETY: kill(2) on the PID of a child this test spawned.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGHUP) };
        assert_eq!(rc, 0);
        testkit::wait_until(Duration::from_secs(5), || {
            let logs = read(&stderr);
            logs.contains("configuration reloaded").then_some(logs)
        })
    });
    let _ = child.kill();
    let _ = child.wait();
    let logs = logs.unwrap_or_else(|| panic!("no reload line:\n{}", read(&stderr)));
    let line = logs
        .lines()
        .find(|l| l.contains("configuration reloaded:"))
        .expect("the server's line");
    assert!(
        line.contains(
            "configuration reloaded: no setting changed; --relay-arg --admin-listen=127.0.0.1:0,\
             --relay-ports=46100-46199 -> --admin-listen=127.0.0.1:0,--relay-ports=46100-46150 \
             (handed to the in-process relay, which logs what it applied and what needs a restart)"
        ),
        "{line}"
    );
    assert!(
        logs.contains(
            "in-process relay (--relay-arg) reload: changed but needs a restart (not applied): \
             --relay-ports"
        ),
        "{logs}"
    );
}

#[cfg(feature = "with-relay")]
/// The relay flags that `--relay-arg` values have redacted (in the start-up summary and the
/// reload line) are exactly the relay's secret flags, names and aliases: a new secret flag of
/// the relay must be added to `startup::summary::PASSED_ON_SECRETS`.
#[test]
fn relay_arg_redacts_exactly_the_relays_secret_flags() {
    use clap::CommandFactory as _;
    let command = relay::Config::command();
    let mut secret: Vec<&str> = command
        .get_arguments()
        .filter(|arg| startup::summary::is_secret(arg))
        .flat_map(|arg| {
            arg.get_long()
                .into_iter()
                .chain(arg.get_all_aliases().unwrap_or_default())
        })
        .collect();
    secret.sort_unstable();
    let mut listed = startup::summary::PASSED_ON_SECRETS.to_vec();
    listed.sort_unstable();
    assert_eq!(secret, listed);
}
