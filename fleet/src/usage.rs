//! The relayed traffic of the fleet's relays, per user and time bucket, kept in the shared
//! Redis so that signaling's `GET /v1/usage` reports the whole fleet and a relay's counts
//! outlive its process.
//!
//! Each registered relay publishes, on every heartbeat and once more when it stops, the totals
//! of the users whose traffic changed since Redis last confirmed them ([`publish`]): absolute
//! totals per (publisher, user, bucket), so a publication that is repeated (after a timeout)
//! counts once. The publisher is the relay's id and a random tag of the process
//! ([`publisher_id`]): a relay restarted under the same id starts new totals beside the old
//! ones instead of overwriting them. Layout, all under the `{fleet}` hash tag (one slot of a
//! Redis Cluster):
//!
//! - [`USAGE_KEY`], a sorted set of the buckets: member `START/WIDTH` (Unix seconds), score the
//!   bucket's end. Members whose end is older than the publishing relay's retention are
//!   trimmed at each publication.
//! - `sig:{fleet}:usage:START`, a hash per bucket: field `PUBLISHER\tUSER` (a user's totals
//!   from one relay process), value `BYTES_TO_PEER BYTES_TO_CLIENT PACKETS_TO_PEER
//!   PACKETS_TO_CLIENT`; field `PUBLISHER` (its `other`: users beyond its
//!   `--usage-max-users`), the same four numbers and a fifth, the records it had counted into
//!   `other` since it started. It expires with the longest retention of the relays that
//!   wrote it: a publication only ever extends its time to live.
//!
//! - `sig:{fleet}:usage-held:PUBLISHER`, a mark that Redis holds what the process published,
//!   set on each of its heartbeats ([`hold`]) with the same time to live as its buckets. A mark
//!   found missing means Redis lost it (restarted without persistence, flushed, failed over to
//!   a replica that lagged): the process publishes again everything its ledger holds.
//!
//! Memory: per bucket at most `relay processes x (--usage-max-users + 1)` fields, for
//! `--usage-retention` (6 h) of buckets: the relays' own ledger bound, once per relay.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::Script;
use relay_proto::Usage;

use crate::link::{Connection, StoreError};

/// Sorted set of published buckets: member `START/WIDTH`, score the bucket's end (Unix s).
pub const USAGE_KEY: &str = "sig:{fleet}:usage";

/// The prefix of a bucket's hash (`sig:{fleet}:usage:START`).
const BUCKET_PREFIX: &str = "sig:{fleet}:usage:";

/// The totals of one time bucket: per user, and of the users beyond the cap (`other`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BucketTotals {
    /// Bucket start, Unix seconds.
    pub start: u64,
    /// Bucket width, seconds.
    pub width: u64,
    /// Per user, absolute totals in this bucket.
    pub users: Vec<(String, Usage)>,
    /// The traffic of users beyond the per-bucket cap.
    pub other: Usage,
}

/// What [`read`] found over a window: the buckets (summed over the relays) and the records
/// counted into `other` by the relay processes that published one (each since it started).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetUsage {
    /// Oldest first.
    pub buckets: Vec<BucketTotals>,
    pub overflowed: u64,
}

/// The publisher of this relay process: the relay's fleet id and a random tag.
pub fn publisher_id(relay: &str, tag: u32) -> String {
    format!("{relay}#{tag:08x}")
}

/// `"BYTES_TO_PEER BYTES_TO_CLIENT PACKETS_TO_PEER PACKETS_TO_CLIENT"`.
fn encode(u: &Usage) -> String {
    format!(
        "{} {} {} {}",
        u.bytes_to_peer, u.bytes_to_client, u.packets_to_peer, u.packets_to_client
    )
}

/// The four numbers of [`encode`], and the fifth of an `other` line (0 when absent).
fn decode(text: &str) -> Option<(Usage, u64)> {
    let mut n = text.split(' ').map(str::parse::<u64>);
    let mut next = || n.next()?.ok();
    let usage = Usage {
        bytes_to_peer: next()?,
        bytes_to_client: next()?,
        packets_to_peer: next()?,
        packets_to_client: next()?,
    };
    Some((usage, next().unwrap_or(0)))
}

/// Publishes `publisher`'s ([`publisher_id`]) totals of `bucket` (the users in it replace
/// what it published for them before), kept for `keep`; `overflowed` is the process's count
/// of records that went to `other`.
pub async fn publish(
    conn: &Connection,
    publisher: &str,
    bucket: &BucketTotals,
    keep: Duration,
    overflowed: u64,
    timeout: Duration,
) -> Result<(), StoreError> {
    let script = Script::new(
        r"
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[4])
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
-- Only ever longer: a relay never shortens what another relay keeps.
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[2], ARGV[3]) end
return 1
",
    );
    let end = bucket.start + bucket.width;
    let mut invocation = script.key(USAGE_KEY);
    invocation
        .key(format!("{BUCKET_PREFIX}{}", bucket.start))
        .arg(format!("{}/{}", bucket.start, bucket.width))
        .arg(end)
        .arg(keep.as_millis().max(1) as u64)
        .arg(end.saturating_sub(keep.as_secs()));
    for (user, usage) in &bucket.users {
        invocation
            .arg(format!("{publisher}\t{user}"))
            .arg(encode(usage));
    }
    if !bucket.other.is_zero() {
        let other = format!("{} {overflowed}", encode(&bucket.other));
        invocation.arg(publisher).arg(other);
    }
    let _: i64 = conn.invoke(&invocation, timeout).await?;
    Ok(())
}

/// The prefix of a publisher's [`hold`] mark.
const HELD_PREFIX: &str = "sig:{fleet}:usage-held:";

/// Marks, for `keep`, that Redis holds what `publisher` published. False when the mark was
/// missing: Redis holds none of it (or the process never published): publish it all again.
pub async fn hold(
    conn: &Connection,
    publisher: &str,
    keep: Duration,
    timeout: Duration,
) -> Result<bool, StoreError> {
    let script = Script::new(
        r"
local held = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return held
",
    );
    let mut invocation = script.key(format!("{HELD_PREFIX}{publisher}"));
    invocation.arg(keep.as_millis().max(1) as u64);
    let held: i64 = conn.invoke(&invocation, timeout).await?;
    Ok(held == 1)
}

/// The published buckets that overlap `[from, to)` (Unix seconds), each summed over the
/// relays that published it. One `ZRANGEBYSCORE` and one `HGETALL` per bucket, as plain
/// commands (not one script): a long window of a large fleet never blocks Redis for the
/// relays' and nodes' other calls. The whole read is bounded by `timeout`.
pub async fn read(
    conn: &Connection,
    from: u64,
    to: u64,
    timeout: Duration,
) -> Result<FleetUsage, StoreError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
    let mut members = redis::cmd("ZRANGEBYSCORE");
    members.arg(USAGE_KEY).arg(format!("({from}")).arg("+inf");
    let members: Vec<String> = conn.query(&members, left()).await?;
    // As `parse_read` takes it: per bucket, its member, field count, fields...
    let mut flat = Vec::new();
    for member in members {
        let Some(start) = member
            .split_once('/')
            .and_then(|(start, _)| start.parse::<u64>().ok())
        else {
            continue;
        };
        if start >= to {
            continue;
        }
        let mut fields = redis::cmd("HGETALL");
        fields.arg(format!("{BUCKET_PREFIX}{start}"));
        let fields: Vec<String> = conn.query(&fields, left()).await?;
        flat.push(member);
        flat.push(fields.len().to_string());
        flat.extend(fields);
    }
    parse_read(&flat).ok_or_else(|| StoreError::Reply("usage buckets".into()))
}

/// [`read`]'s flat reply as buckets, oldest first.
fn parse_read(flat: &[String]) -> Option<FleetUsage> {
    let mut rest = flat;
    let mut buckets = Vec::new();
    // Per publisher, the highest overflow count its `other` lines carried.
    let mut overflowed: BTreeMap<&str, u64> = BTreeMap::new();
    while let [member, count, tail @ ..] = rest {
        let (start, width) = member.split_once('/')?;
        let count: usize = count.parse().ok()?;
        let fields = tail.get(..count)?;
        let mut users: BTreeMap<&str, Usage> = BTreeMap::new();
        let mut other = Usage::default();
        for pair in fields.chunks_exact(2) {
            let Some((usage, overflow)) = decode(&pair[1]) else {
                continue;
            };
            match pair[0].split_once('\t') {
                Some((_publisher, user)) => users.entry(user).or_default().add(&usage),
                None => {
                    other.add(&usage);
                    let most = overflowed.entry(&pair[0]).or_default();
                    *most = (*most).max(overflow);
                }
            }
        }
        buckets.push(BucketTotals {
            start: start.parse().ok()?,
            width: width.parse().ok()?,
            users: users.into_iter().map(|(u, n)| (u.to_owned(), n)).collect(),
            other,
        });
        rest = &tail[count..];
    }
    buckets.sort_by_key(|b| b.start);
    Some(FleetUsage {
        buckets,
        overflowed: overflowed.values().sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(bytes: u64) -> Usage {
        Usage {
            bytes_to_peer: bytes,
            bytes_to_client: 2 * bytes,
            packets_to_peer: 1,
            packets_to_client: 2,
        }
    }

    #[test]
    fn a_bucket_sums_the_relays_and_keeps_other_apart() {
        let flat: Vec<String> = [
            "120/60",
            "8",
            "r1#1\troom:a",
            "10 20 1 2",
            "r2#1\troom:a",
            "5 10 1 2",
            "r2#1",
            "7 14 1 2 3",
            "r2#2",
            "1 2 1 2 1",
            "60/60",
            "4",
            "r1#1\troom:b",
            "1 2 1 2",
            "r2#1",
            "1 2 1 2 2",
        ]
        .map(String::from)
        .to_vec();
        let read = parse_read(&flat).unwrap();
        assert_eq!(
            read.overflowed,
            3 + 1,
            "the latest count of each process, summed"
        );
        assert_eq!(read.buckets.len(), 2);
        assert_eq!(read.buckets[0].start, 60, "oldest first");
        let newer = &read.buckets[1];
        assert_eq!((newer.start, newer.width), (120, 60));
        let mut expected = usage(10);
        expected.add(&usage(5));
        assert_eq!(newer.users, vec![("room:a".to_owned(), expected)]);
        let mut other = usage(7);
        other.add(&usage(1));
        assert_eq!(newer.other, other);
        assert_eq!(decode(&encode(&usage(9))), Some((usage(9), 0)));
        assert_eq!(parse_read(&["x".into(), "0".into()]), None);
        assert_eq!(publisher_id("eu-1", 255), "eu-1#000000ff");
    }
}
