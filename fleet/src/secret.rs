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
