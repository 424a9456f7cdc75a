//! The TURN REST secret of a deployment whose processes were given none: the first process to
//! start writes a random one (`SET NX`), every other reads it. Signaling nodes mint TURN
//! credentials with it; relays (in-process or registered in the fleet) accept them.

use std::time::Duration;

use redis::Script;

use crate::link::{self, Connection, StoreError};

/// Where the agreed secret lives.
pub const TURN_SECRET_KEY: &str = "sig:secret:turn";

/// How long an agreed secret outlives the last process that refreshes it.
pub const SECRET_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// A relay's record names the TURN REST secrets it accepts by these ids, so that signaling
/// gives rooms only to relays that accept the credentials it mints: the first 8 bytes of
/// HMAC-SHA256(secret, "turn-rest-secret-id"), in hex. One-way: the id does not give the
/// secret away (a weak secret could be guessed from it offline, as from any credential).
pub fn secret_id(secret: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, b"turn-rest-secret-id");
    hex::encode(&tag.as_ref()[..8])
}

/// The secret already agreed, or `candidate` if this process is the first.
pub async fn agree_turn_secret(
    urls: &[String],
    timeout: Duration,
    candidate: &str,
) -> Result<String, StoreError> {
    let (conn, _) = link::connect(urls, timeout).await?;
    keep_turn_secret(&conn, Some(candidate), timeout)
        .await?
        .ok_or_else(|| StoreError::Reply("the agreed TURN secret vanished".into()))
}

/// One round trip, at the start and on each heartbeat: writes `secret` if Redis holds none
/// (the first process, or a Redis that restarted empty; `NX`, never over another, so that a
/// process started later reads it instead of making another), renews the time to live of the
/// secret Redis holds ([`SECRET_TTL`] from now), and returns it. `None` writes nothing: a
/// process given its own secret still keeps an agreed one alive for the others.
pub async fn keep_turn_secret(
    conn: &Connection,
    secret: Option<&str>,
    timeout: Duration,
) -> Result<Option<String>, StoreError> {
    let script = Script::new(
        r"
if ARGV[1] ~= '' then redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('GET', KEYS[1])
",
    );
    let mut invocation = script.key(TURN_SECRET_KEY);
    invocation
        .arg(secret.unwrap_or(""))
        .arg(SECRET_TTL.as_millis() as u64);
    conn.invoke(&invocation, timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_id_is_short_stable_and_differs_per_secret() {
        let id = secret_id(b"s3cret");
        assert_eq!(id.len(), 16);
        assert_eq!(id, secret_id(b"s3cret"));
        assert_ne!(id, secret_id(b"s3cret2"));
        assert!(!id.contains("s3cret"));
    }
}
