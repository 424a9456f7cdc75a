//! The TURN REST secret of a deployment whose processes were given none: the first process to
//! start writes a random one (`SET NX`), every other reads it. Signaling nodes mint TURN
//! credentials with it; relays (in-process or registered in the fleet) accept them.

use std::time::Duration;

use crate::link::{self, StoreError};

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
    let _: Option<String> = conn.query(&restore_turn_secret(candidate), timeout).await?;
    let get = redis::cmd("GET").arg(TURN_SECRET_KEY).to_owned();
    let agreed: Option<String> = conn.query(&get, timeout).await?;
    agreed.ok_or_else(|| StoreError::Reply("the agreed TURN secret vanished".into()))
}

/// What a process that agreed on `secret` sends on each heartbeat: the secret written back if
/// Redis lost it (restarted empty; `NX`, never over another), so that a process started later
/// reads it instead of making another; then [`renew_turn_secret`].
pub fn restore_turn_secret(secret: &str) -> redis::Cmd {
    redis::cmd("SET")
        .arg(TURN_SECRET_KEY)
        .arg(secret)
        .arg("NX")
        .arg("PX")
        .arg(SECRET_TTL.as_millis() as u64)
        .to_owned()
}

/// Renews the agreed secret's time to live ([`SECRET_TTL`] from now), on each heartbeat.
pub fn renew_turn_secret() -> redis::Cmd {
    redis::cmd("PEXPIRE")
        .arg(TURN_SECRET_KEY)
        .arg(SECRET_TTL.as_millis() as u64)
        .to_owned()
}
