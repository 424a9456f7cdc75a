//! The relay fleet as this node sees it: the relays registered in Redis (`relay --register`),
//! refreshed every `--fleet-refresh`, and which of them serves each room
//! (`fleet::relays::choose`: every node agrees without talking to the others, and both peers of
//! a room get the same relay, so relayed traffic takes one relay hop instead of two).
//!
//! When a refresh changes the relay of a room this node serves (its relay died, drained, or a
//! new relay took the room over), every session of that room attached here gets an
//! `ice_servers` frame at once; the clients restart ICE on connections that used the old relay.
//! With no active relay in the fleet, the static `--turn-url` list is used. A relay missing
//! from a read before its lease ran out (Redis restarted empty, or failed over to a replica
//! that had not seen its last heartbeats) is kept until that lease ends, unless it was
//! draining: its rooms stay put while it registers again, instead of moving away and back (or
//! to the static list).
//!
//! A relay whose record names the TURN secrets it accepts, none of them the one this node signs
//! with (a relay given another `--turn-secret`, or none while the nodes were given one), would
//! refuse every credential minted here: it gets no rooms, and a warning names it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet::link::Connection;
use fleet::relays::{Leased, RelayRecord, RelayState, choose, read_fleet};

use crate::backend::Backend;
use crate::metrics::Metrics;
use crate::protocol::RoomId;

/// See the module docs.
#[derive(Debug)]
pub struct RelayFleet {
    /// Every relay as last read.
    relays: RwLock<Arc<Vec<RelayRecord>>>,
    /// Those that accept this node's credentials: the ones rooms are given to.
    usable: RwLock<Arc<Vec<RelayRecord>>>,
    region: Option<String>,
    /// The id (`fleet::secret::secret_id`) of the secret this node signs with, if any.
    secret_id: RwLock<Option<String>>,
    /// The relays warned about as refusing this node's credentials (warned once each).
    refusing: Mutex<HashSet<String>>,
    /// The relays of the last read, with their leases ([`Self::carry_over`]).
    leased: Mutex<Vec<Leased>>,
}

impl RelayFleet {
    /// An empty fleet; `region` is this node's `--region`.
    pub fn new(region: Option<String>) -> Self {
        Self {
            relays: RwLock::new(Arc::new(Vec::new())),
            usable: RwLock::new(Arc::new(Vec::new())),
            region,
            secret_id: RwLock::new(None),
            refusing: Mutex::new(HashSet::new()),
            leased: Mutex::new(Vec::new()),
        }
    }

    /// The relays of a fresh `read` of Redis, and those of the last read that it misses while
    /// their lease runs past `now_ms` (Unix ms) and they were active: Redis lost their records
    /// (restarted empty), not they their lease. A relay that leaves marks itself draining
    /// first, and one that dies stays in Redis until its lease ends: neither is kept.
    pub fn carry_over(&self, read: Vec<Leased>, now_ms: u64) -> Vec<RelayRecord> {
        let mut last = self.leased.lock().unwrap_or_else(PoisonError::into_inner);
        let mut relays = read;
        for old in last.iter() {
            let missing = !relays.iter().any(|l| l.record.id == old.record.id);
            if missing && old.record.state == RelayState::Active && old.until_ms > now_ms {
                tracing::info!(
                    relay = %old.record.id,
                    lease_left_ms = old.until_ms - now_ms,
                    "a relay is missing from redis before its lease ran out (redis lost its \
                     data?): kept until its lease ends"
                );
                relays.push(old.clone());
            }
        }
        relays.sort_by(|a, b| a.record.id.cmp(&b.record.id));
        last.clone_from(&relays);
        relays.into_iter().map(|l| l.record).collect()
    }

    /// This node signs TURN credentials with `secret` from now on (at start and on SIGHUP):
    /// the next [`Self::update`] gives rooms only to relays that accept it.
    pub fn set_signing_secret(&self, secret: Option<&[u8]>) {
        *self
            .secret_id
            .write()
            .unwrap_or_else(PoisonError::into_inner) = secret.map(fleet::secret::secret_id);
    }

    /// Every relay as last read.
    pub fn snapshot(&self) -> Arc<Vec<RelayRecord>> {
        Arc::clone(&self.relays.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The relays rooms are given to (they accept this node's credentials).
    fn usable(&self) -> Arc<Vec<RelayRecord>> {
        Arc::clone(&self.usable.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether `relay` accepts the credentials this node mints.
    pub fn accepts(&self, relay: &RelayRecord) -> bool {
        let secret_id = self
            .secret_id
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        secret_id.as_deref().is_none_or(|id| relay.accepts(id))
    }

    /// The relay that serves `room` now, if the fleet has an active one.
    pub fn relay_for(&self, room: &RoomId) -> Option<RelayRecord> {
        let relays = self.usable();
        choose(room.as_str(), &relays, self.region.as_deref()).cloned()
    }

    /// Installs a fresh read of the fleet; returns the rooms among `served` whose relay changed.
    pub fn update(&self, relays: Vec<RelayRecord>, served: &[RoomId]) -> Vec<RoomId> {
        let (usable, refusing): (Vec<&RelayRecord>, Vec<&RelayRecord>) =
            relays.iter().partition(|r| self.accepts(r));
        let usable: Vec<RelayRecord> = usable.into_iter().cloned().collect();
        self.warn_about_refusing(&refusing);
        *self.relays.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(relays);
        let old = self.usable();
        if *old == usable {
            return Vec::new();
        }
        let region = self.region.as_deref();
        let moved = served
            .iter()
            .filter(|room| {
                let before = choose(room.as_str(), &old, region).map(|r| &r.id);
                let after = choose(room.as_str(), &usable, region).map(|r| &r.id);
                before != after
            })
            .cloned()
            .collect();
        *self.usable.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(usable);
        moved
    }

    /// Warns once about each relay of `refusing` (they refuse this node's credentials).
    fn warn_about_refusing(&self, refusing: &[&RelayRecord]) {
        let mut warned = self.refusing.lock().unwrap_or_else(PoisonError::into_inner);
        for relay in refusing {
            if warned.insert(relay.id.clone()) {
                tracing::warn!(
                    relay = %relay.id,
                    "this relay does not accept the TURN credentials this node mints (it was \
                     given another --turn-secret, or none while this node has one): it gets no \
                     rooms until both share a secret"
                );
            }
        }
        warned.retain(|id| refusing.iter().any(|r| &r.id == id));
    }

    /// How many rooms of `served` each active relay serves (for the metrics).
    pub fn rooms_per_relay(&self, served: &[RoomId]) -> HashMap<String, u64> {
        let relays = self.usable();
        let mut counts: HashMap<String, u64> = relays
            .iter()
            .filter(|r| r.state == RelayState::Active)
            .map(|r| (r.id.clone(), 0))
            .collect();
        for room in served {
            if let Some(relay) = choose(room.as_str(), &relays, self.region.as_deref()) {
                *counts.entry(relay.id.clone()).or_default() += 1;
            }
        }
        counts
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One refresh: reads the fleet and returns the rooms among `served` that moved, or `None` when
/// Redis did not answer (the last known fleet stays in use).
pub async fn refresh(
    fleet: &RelayFleet,
    conn: &Connection,
    timeout: Duration,
    served: &[RoomId],
    metrics: &Metrics,
) -> Option<Vec<RoomId>> {
    let now_ms = unix_ms();
    let relays = match read_fleet(conn, now_ms, timeout).await {
        Ok(read) => fleet.carry_over(read, now_ms),
        Err(e) => {
            tracing::debug!(error = %e, "could not read the relay fleet");
            return None;
        }
    };
    let moved = fleet.update(relays, served);
    let active = fleet
        .usable()
        .iter()
        .filter(|r| r.state == RelayState::Active)
        .count();
    metrics.relay_fleet.set(active as i64);
    metrics.relay_reassignments.inc_by(moved.len() as u64);
    metrics.set_rooms_per_relay(&fleet.rooms_per_relay(served));
    if !moved.is_empty() {
        tracing::info!(
            rooms = moved.len(),
            active,
            "relay fleet changed: rooms moved"
        );
    }
    Some(moved)
}

/// Refreshes the fleet every `every` and moves the rooms whose relay changed, until aborted.
pub async fn run(
    fleet: Arc<RelayFleet>,
    conn: Connection,
    hub: &Backend,
    every: Duration,
    timeout: Duration,
    metrics: &Metrics,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let served = hub.rooms();
        if let Some(moved) = refresh(&fleet, &conn, timeout, &served, metrics).await
            && !moved.is_empty()
        {
            hub.push_ice_servers(&moved).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(id: &str, state: RelayState) -> RelayRecord {
        let urls = vec![format!("turn:{id}:3478?transport=udp")];
        RelayRecord {
            state,
            ..RelayRecord::new(id, urls)
        }
    }

    #[test]
    fn a_relay_missing_before_its_lease_ends_is_kept_unless_it_was_draining() {
        let fleet = RelayFleet::new(None);
        let leased = |id: &str, state, until_ms| Leased {
            record: relay(id, state),
            until_ms,
        };
        let ids = |relays: Vec<RelayRecord>| relays.into_iter().map(|r| r.id).collect::<Vec<_>>();
        let read = vec![
            leased("a", RelayState::Active, 5_000),
            leased("b", RelayState::Draining, 5_000),
            leased("c", RelayState::Active, 2_000),
        ];
        assert_eq!(ids(fleet.carry_over(read, 1_000)), ["a", "b", "c"]);
        // Redis lost every record at 1,500: the active ones stay until their leases end; the
        // draining one (it was leaving) does not.
        assert_eq!(ids(fleet.carry_over(Vec::new(), 1_500)), ["a", "c"]);
        assert_eq!(ids(fleet.carry_over(Vec::new(), 2_500)), ["a"]);
        // Back in Redis with a fresh lease: the record read wins.
        let back = vec![leased("a", RelayState::Draining, 9_000)];
        assert_eq!(fleet.carry_over(back, 3_000)[0].state, RelayState::Draining);
        assert!(fleet.carry_over(Vec::new(), 5_500).is_empty());
    }

    #[test]
    fn an_update_reports_exactly_the_served_rooms_whose_relay_changed() {
        let fleet = RelayFleet::new(None);
        let rooms: Vec<RoomId> = (0..300).map(|i| RoomId(format!("r{i}"))).collect();
        let three = vec![
            relay("a", RelayState::Active),
            relay("b", RelayState::Active),
            relay("c", RelayState::Active),
        ];
        // From nothing to a fleet: every room gets a relay.
        assert_eq!(fleet.update(three.clone(), &rooms).len(), 300);
        assert!(fleet.update(three.clone(), &rooms).is_empty(), "no change");
        let on_b: Vec<RoomId> = rooms
            .iter()
            .filter(|r| fleet.relay_for(r).unwrap().id == "b")
            .cloned()
            .collect();
        let mut drained = three.clone();
        drained[1].state = RelayState::Draining;
        let moved = fleet.update(drained, &rooms);
        assert_eq!(moved, on_b, "exactly b's rooms move");
        assert!(rooms.iter().all(|r| fleet.relay_for(r).unwrap().id != "b"));
        let counts = fleet.rooms_per_relay(&rooms);
        assert_eq!(counts.values().sum::<u64>(), 300);
        assert!(!counts.contains_key("b"));
        // A load change alone moves nothing.
        let mut busier = fleet.snapshot().as_ref().clone();
        busier[0].allocations = 7;
        assert!(fleet.update(busier, &rooms).is_empty());
    }
}
