//! Relays as a fleet: what a relay advertises about itself in the shared store, and which relay
//! serves a room.
//!
//! A relay started with `--register` keeps a [`RelayRecord`] under [`relay_key`] and a lease in
//! the sorted set [`RELAYS_KEY`] (id -> lease expiry, Unix ms). Signaling reads the live,
//! non-draining records and gives every peer of a room the same relay, by weighted rendezvous
//! (highest-random-weight) hashing of the room id: each relay scores
//! `capacity / -ln(u)` with `u` a uniform hash of (relay, room) in (0, 1), and the highest score
//! wins. Every node computes the same answer with no coordination; when a relay joins or
//! leaves, only the rooms it wins or loses move (about 1/N of them); a relay of capacity 2 gets
//! twice the rooms of a relay of capacity 1.
//!
//! [`advertise`], [`withdraw`] and [`read_fleet`] are the only Redis calls on these keys (the
//! relay's registration task makes the first two, signaling's fleet watcher the third); the
//! rest is pure.

use std::collections::HashMap;
use std::time::Duration;

use redis::Script;

use crate::link::{Connection, StoreError};

/// Sorted set of registered relays: member = relay id, score = lease expiry (Unix ms). The
/// `{fleet}` hash tag keeps it and every record in one slot of a Redis Cluster, so one script
/// reads the whole fleet.
pub const RELAYS_KEY: &str = "sig:{fleet}:relays";

/// The hash holding one relay's [`RelayRecord`] (it expires with the lease).
pub fn relay_key(id: &str) -> String {
    format!("sig:{{fleet}}:relay:{id}")
}

/// Whether a relay takes new rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayState {
    Active,
    /// Shutting down: its rooms move to other relays; its allocations live until the drain ends.
    Draining,
}

impl RelayState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Draining => "draining",
        }
    }
}

/// What one relay advertises.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayRecord {
    pub id: String,
    /// The TURN URLs clients should use (`turn:`/`turns:`, with `?transport=`), and `stun:`.
    pub urls: Vec<String>,
    /// A region label (`--region`), if any.
    pub region: Option<String>,
    /// Relative weight of the relay's share of rooms (`--capacity`), > 0.
    pub capacity: f64,
    /// Live load: allocations now.
    pub allocations: u64,
    /// Live load: relayed bytes per second (both directions), over the last heartbeat.
    pub bytes_per_sec: u64,
    pub state: RelayState,
    /// The ids ([`crate::secret::secret_id`]) of the TURN REST secrets the relay accepts
    /// (empty: none, static users only); `None` for a relay that predates the field.
    pub secret_ids: Option<Vec<String>>,
}

impl RelayRecord {
    /// A relay at `urls` as it registers before its first heartbeat: active, no region, the
    /// default capacity of 1, no load yet.
    pub fn new(id: impl Into<String>, urls: Vec<String>) -> Self {
        Self {
            id: id.into(),
            urls,
            region: None,
            capacity: 1.0,
            allocations: 0,
            bytes_per_sec: 0,
            state: RelayState::Active,
            secret_ids: None,
        }
    }

    /// Whether the relay accepts the credentials signed with the secret of id `secret_id` (a
    /// relay that predates the list is taken at its word).
    pub fn accepts(&self, secret_id: &str) -> bool {
        self.secret_ids
            .as_ref()
            .is_none_or(|ids| ids.iter().any(|id| id == secret_id))
    }

    /// The record as hash fields.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("urls", self.urls.join(" ")),
            ("region", self.region.clone().unwrap_or_default()),
            ("capacity", self.capacity.to_string()),
            ("allocations", self.allocations.to_string()),
            ("bytes_per_sec", self.bytes_per_sec.to_string()),
            ("state", self.state.as_str().to_owned()),
        ];
        if let Some(ids) = &self.secret_ids {
            fields.push(("secret_ids", ids.join(" ")));
        }
        fields
    }

    /// A record from its hash fields; `None` when a field is missing or malformed (a record
    /// written by an incompatible version is ignored, not guessed at).
    pub fn from_fields(id: &str, fields: &HashMap<String, String>) -> Option<Self> {
        let urls: Vec<String> = fields
            .get("urls")?
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let capacity: f64 = fields.get("capacity")?.parse().ok()?;
        if urls.is_empty() || !(capacity > 0.0 && capacity.is_finite()) {
            return None;
        }
        let state = match fields.get("state")?.as_str() {
            "active" => RelayState::Active,
            "draining" => RelayState::Draining,
            _ => return None,
        };
        Some(Self {
            id: id.to_owned(),
            urls,
            region: fields.get("region").filter(|r| !r.is_empty()).cloned(),
            capacity,
            allocations: fields.get("allocations")?.parse().ok()?,
            bytes_per_sec: fields.get("bytes_per_sec")?.parse().ok()?,
            state,
            secret_ids: fields
                .get("secret_ids")
                .map(|ids| ids.split_whitespace().map(str::to_owned).collect()),
        })
    }
}

/// What [`advertise`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advertised {
    /// The record and its lease are written.
    Written,
    /// Another live relay holds this id (another process, at other URLs, with a lease not run
    /// out): nothing was written. Its URLs.
    IdTaken { urls: Vec<String> },
}

/// Writes `record` with a lease ending at `lease_until_ms` (Unix ms): the record expires with
/// it unless renewed. `instance` names this process: a record of the same id written by
/// another process at other URLs, whose lease has not run out at `now_ms`, is another relay
/// given the same id, and is left alone (two relays writing one record in turn would move
/// rooms between them at every heartbeat). The same id at the same URLs is this relay's
/// predecessor (restarted within its lease): taken over.
pub async fn advertise(
    conn: &Connection,
    record: &RelayRecord,
    instance: &str,
    (now_ms, lease_until_ms): (u64, u64),
    lease: Duration,
    timeout: Duration,
) -> Result<Advertised, StoreError> {
    let script = Script::new(
        r"
local holder = redis.call('HMGET', KEYS[2], 'instance', 'urls')
local until_ms = redis.call('ZSCORE', KEYS[1], ARGV[1])
if holder[1] and holder[1] ~= ARGV[5] and holder[2] ~= ARGV[7]
   and until_ms and tonumber(until_ms) > tonumber(ARGV[4]) then
  return {'taken', holder[2]}
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'instance', ARGV[5])
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return {'ok'}
",
    );
    let mut invocation = script.key(RELAYS_KEY);
    invocation
        .key(relay_key(&record.id))
        .arg(&record.id)
        .arg(lease_until_ms)
        .arg(lease.as_millis().max(1) as u64)
        .arg(now_ms)
        .arg(instance);
    // `urls` first (ARGV[6], its value ARGV[7]): the script compares it with the holder's.
    for (field, value) in record.to_fields() {
        invocation.arg(field).arg(value);
    }
    let reply: Vec<String> = conn.invoke(&invocation, timeout).await?;
    match reply.as_slice() {
        [ok] if ok == "ok" => Ok(Advertised::Written),
        [taken, urls] if taken == "taken" => Ok(Advertised::IdTaken {
            urls: urls.split_whitespace().map(str::to_owned).collect(),
        }),
        other => Err(StoreError::Reply(format!("advertise: {other:?}"))),
    }
}

/// Removes relay `id` from the fleet at once (a clean exit), if this process (`instance`)
/// holds its record: another relay given the same id stays.
pub async fn withdraw(
    conn: &Connection,
    id: &str,
    instance: &str,
    timeout: Duration,
) -> Result<(), StoreError> {
    let script = Script::new(
        r"
if redis.call('HGET', KEYS[2], 'instance') ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
",
    );
    let mut invocation = script.key(RELAYS_KEY);
    invocation.key(relay_key(id)).arg(id).arg(instance);
    let _: i64 = conn.invoke(&invocation, timeout).await?;
    Ok(())
}

/// The key naming the fleet's data in this Redis: a random token the first reader writes (it
/// lives [`EPOCH_TTL`] past the last read). A new one means Redis lost the fleet (restarted
/// empty), not that its relays left.
pub const EPOCH_KEY: &str = "sig:{fleet}:epoch";

/// How long [`EPOCH_KEY`] outlives the last read of the fleet.
pub const EPOCH_TTL: Duration = Duration::from_secs(24 * 3600);

/// A relay's record with the end of its lease (Unix ms).
#[derive(Debug, Clone, PartialEq)]
pub struct Leased {
    pub record: RelayRecord,
    pub until_ms: u64,
}

/// One read of the fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetRead {
    /// The token of [`EPOCH_KEY`].
    pub epoch: String,
    /// The relays whose lease runs past the time of the read, sorted by id.
    pub relays: Vec<Leased>,
}

/// The relays whose lease runs past `now_ms`, sorted by id (records that do not parse are left
/// out), and the fleet's epoch (`epoch` is written when there is none). Expired leases are
/// removed on the way.
pub async fn read_fleet(
    conn: &Connection,
    now_ms: u64,
    epoch: &str,
    timeout: Duration,
) -> Result<FleetRead, StoreError> {
    // The epoch, then every record as: id, lease end, field count, fields...
    let script = Script::new(
        r"
local epoch = redis.call('GET', KEYS[2])
if not epoch then epoch = ARGV[3] end
redis.call('SET', KEYS[2], epoch, 'PX', ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local out = {epoch}
local leases = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'WITHSCORES')
for i = 1, #leases, 2 do
  local fields = redis.call('HGETALL', ARGV[2] .. leases[i])
  out[#out + 1] = leases[i]
  out[#out + 1] = leases[i + 1]
  out[#out + 1] = tostring(#fields)
  for _, f in ipairs(fields) do out[#out + 1] = f end
end
return out
",
    );
    let mut invocation = script.key(RELAYS_KEY);
    invocation
        .key(EPOCH_KEY)
        .arg(now_ms)
        .arg(relay_key(""))
        .arg(epoch)
        .arg(EPOCH_TTL.as_millis() as u64);
    let flat: Vec<String> = conn.invoke(&invocation, timeout).await?;
    let Some((epoch, flat)) = flat.split_first() else {
        return Err(StoreError::Reply("read_fleet: no epoch".into()));
    };
    let mut relays = parse_fleet(flat);
    relays.sort_by(|a, b| a.record.id.cmp(&b.record.id));
    Ok(FleetRead {
        epoch: epoch.clone(),
        relays,
    })
}

/// The records of [`read_fleet`]'s flat reply.
fn parse_fleet(flat: &[String]) -> Vec<Leased> {
    let mut relays = Vec::new();
    let mut rest = flat;
    while let [id, until, count, tail @ ..] = rest {
        let count: usize = count.parse().unwrap_or(0).min(tail.len());
        let fields: HashMap<String, String> = tail[..count]
            .chunks_exact(2)
            .map(|kv| (kv[0].clone(), kv[1].clone()))
            .collect();
        // A score Redis printed as a float (`1.7e12`) parses too.
        let until_ms = until.parse::<f64>().map_or(0, |ms| ms as u64);
        relays.extend(
            RelayRecord::from_fields(id, &fields).map(|record| Leased { record, until_ms }),
        );
        rest = &tail[count..];
    }
    relays
}

/// The relay that serves `room`: the highest rendezvous score among the active relays, among
/// those of `region` when there are any (else among all). `None` when no relay is active.
pub fn choose<'a>(
    room: &str,
    relays: &'a [RelayRecord],
    region: Option<&str>,
) -> Option<&'a RelayRecord> {
    let active = || relays.iter().filter(|r| r.state == RelayState::Active);
    let in_region = |r: &&RelayRecord| region.is_none_or(|want| r.region.as_deref() == Some(want));
    let pool: Vec<&RelayRecord> = if active().any(|r| in_region(&r)) {
        active().filter(in_region).collect()
    } else {
        active().collect()
    };
    pool.into_iter().max_by(|a, b| {
        score(room, a)
            .total_cmp(&score(room, b))
            // Equal scores (equal ids and rooms only): the smaller id, on every node.
            .then_with(|| b.id.cmp(&a.id))
    })
}

/// Weighted rendezvous score of `relay` for `room`.
fn score(room: &str, relay: &RelayRecord) -> f64 {
    let u = unit_hash(&relay.id, room);
    relay.capacity / -u.ln()
}

/// A hash of (relay, room), uniform in (0, 1), the same in every process and version: the first
/// 53 bits of SHA-256(relay id, 0, room).
fn unit_hash(relay: &str, room: &str) -> f64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(relay.as_bytes());
    ctx.update(&[0]);
    ctx.update(room.as_bytes());
    let digest = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    let bits = u64::from_be_bytes(first) >> 11;
    // (bits + 0.5) / 2^53: never 0 or 1, so the logarithm is finite and negative.
    (bits as f64 + 0.5) / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(id: &str, capacity: f64) -> RelayRecord {
        let urls = vec![format!("turn:{id}.example.com:3478?transport=udp")];
        RelayRecord {
            capacity,
            ..RelayRecord::new(id, urls)
        }
    }

    /// The hash fields of `record`, as Redis gives them back.
    fn fields_of(record: &RelayRecord) -> HashMap<String, String> {
        record
            .to_fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    }

    fn rooms(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("room-{i}")).collect()
    }

    fn counts(relays: &[RelayRecord], rooms: &[String]) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for room in rooms {
            *counts
                .entry(choose(room, relays, None).unwrap().id.clone())
                .or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn a_record_round_trips_through_its_fields() {
        let mut record = relay("r1", 2.5);
        record.region = Some("eu".into());
        record.urls.push("turns:r1.example.com:5349".into());
        record.state = RelayState::Draining;
        record.secret_ids = Some(vec!["0011223344556677".into(), "8899aabbccddeeff".into()]);
        let fields = fields_of(&record);
        assert_eq!(RelayRecord::from_fields("r1", &fields), Some(record));
        let mut broken = fields.clone();
        broken.insert("capacity".into(), "-1".into());
        assert_eq!(RelayRecord::from_fields("r1", &broken), None);
        broken.remove("capacity");
        assert_eq!(RelayRecord::from_fields("r1", &broken), None);
    }

    #[test]
    fn a_relay_accepts_the_secrets_its_record_names() {
        let mut record = relay("r", 1.0);
        assert!(
            record.accepts("0011223344556677"),
            "a record without the list"
        );
        record.secret_ids = Some(Vec::new());
        assert!(!record.accepts("0011223344556677"), "static users only");
        record.secret_ids = Some(vec!["0011223344556677".into()]);
        assert!(record.accepts("0011223344556677"));
        assert!(!record.accepts("8899aabbccddeeff"));
        // An empty list survives the round trip through Redis as an empty field.
        record.secret_ids = Some(Vec::new());
        assert_eq!(
            RelayRecord::from_fields("r", &fields_of(&record)),
            Some(record)
        );
    }

    #[test]
    fn the_fleet_reply_parses_and_skips_broken_records() {
        let record = relay("a", 1.0);
        let mut flat = vec!["a".to_owned(), "1767225600000".to_owned()];
        let fields = record.to_fields();
        flat.push((fields.len() * 2).to_string());
        for (k, v) in fields {
            flat.push(k.to_owned());
            flat.push(v);
        }
        flat.extend([
            "b".to_owned(),
            "1767225600000".to_owned(),
            "2".to_owned(),
            "urls".to_owned(),
            "x".to_owned(),
        ]);
        let until_ms = 1_767_225_600_000;
        assert_eq!(parse_fleet(&flat), vec![Leased { record, until_ms }]);
    }

    #[test]
    fn rooms_spread_evenly_and_the_same_on_every_call() {
        let relays = vec![relay("a", 1.0), relay("b", 1.0), relay("c", 1.0)];
        let rooms = rooms(3000);
        let counts = counts(&relays, &rooms);
        let max = *counts.values().max().unwrap() as f64;
        assert!(max / 1000.0 < 1.1, "max/mean {}: {counts:?}", max / 1000.0);
        let shuffled = vec![relays[2].clone(), relays[0].clone(), relays[1].clone()];
        for room in &rooms {
            assert_eq!(
                choose(room, &relays, None).unwrap().id,
                choose(room, &shuffled, None).unwrap().id,
                "the order of the records does not matter"
            );
        }
    }

    #[test]
    fn a_joining_relay_takes_about_one_nth_and_a_leaving_one_moves_only_its_own() {
        let three = vec![relay("a", 1.0), relay("b", 1.0), relay("c", 1.0)];
        let mut four = three.clone();
        four.push(relay("d", 1.0));
        let rooms = rooms(4000);
        let mut moved = 0;
        for room in &rooms {
            let before = &choose(room, &three, None).unwrap().id;
            let after = &choose(room, &four, None).unwrap().id;
            if before != after {
                assert_eq!(after, "d", "a room only moves to the new relay");
                moved += 1;
            }
        }
        let share = f64::from(moved) / 4000.0;
        assert!((0.22..0.28).contains(&share), "moved {share}");
        // `b` drains: only its rooms move.
        let mut drained = three.clone();
        drained[1].state = RelayState::Draining;
        for room in &rooms {
            let before = &choose(room, &three, None).unwrap().id;
            let after = &choose(room, &drained, None).unwrap().id;
            assert!(before == after || before == "b");
            assert_ne!(after, "b");
        }
    }

    #[test]
    fn capacity_weighs_the_share_and_region_narrows_the_choice() {
        let relays = vec![relay("a", 1.0), relay("b", 2.0)];
        let counts = counts(&relays, &rooms(3000));
        let ratio = counts["b"] as f64 / counts["a"] as f64;
        assert!((1.8..2.2).contains(&ratio), "ratio {ratio}");
        let mut regional = vec![relay("a", 1.0), relay("b", 1.0), relay("c", 1.0)];
        regional[2].region = Some("eu".into());
        for room in rooms(50) {
            assert_eq!(choose(&room, &regional, Some("eu")).unwrap().id, "c");
        }
        // A region without relays falls back to all of them.
        assert!(choose("x", &regional, Some("us")).is_some());
        regional
            .iter_mut()
            .for_each(|r| r.state = RelayState::Draining);
        assert!(choose("x", &regional, None).is_none());
    }
}
