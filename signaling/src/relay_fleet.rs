//! The relay fleet as this node sees it: the relays registered in Redis (`relay --register`),
//! refreshed every `--fleet-refresh`, and which of them serves each room
//! (`fleet::relays::choose`: every node agrees without talking to the others, and both peers of
//! a room get the same relay, so relayed traffic takes one relay hop instead of two).
//!
//! When a refresh changes the relay of a room this node serves (its relay died, drained, or a
//! new relay took the room over), every session of that room attached here gets an
//! `ice_servers` frame at once; the clients restart ICE on connections that used the old relay.
//! With no active relay in the fleet, the static `--turn-url` list is used. When Redis lost
//! the fleet (restarted empty: a new epoch, `fleet::relays::EPOCH_KEY`), the relays active at
//! the last read are kept until their leases end or they register again: their rooms stay put,
//! instead of moving away and back (or to the static list).
//!
//! A relay whose record names the TURN secrets it accepts, none of them the one this node signs
//! with (a relay given another `--turn-secret`, or none while the nodes were given one), would
//! refuse every credential minted here: it gets no rooms, and a warning names it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet::link::Connection;
use fleet::relays::{FleetRead, Leased, RelayRecord, RelayState, choose, read_fleet};

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
    /// What [`Self::carry_over`] keeps between reads.
    leased: Mutex<CarryOver>,
}

/// The fleet's epoch at the last read, the relays of that read, and those kept because Redis
/// lost them.
#[derive(Debug, Default)]
struct CarryOver {
    epoch: Option<String>,
    /// When the last read was made (Unix ms).
    last_read_ms: u64,
    last: Vec<Leased>,
    kept: Vec<Leased>,
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
            leased: Mutex::new(CarryOver::default()),
        }
    }

    /// The relays of a fresh `read` of Redis (at `now_ms`, Unix ms) and, when Redis lost the
    /// fleet since the last read (a new epoch), the relays then active that it misses, for
    /// what was left of their leases at the last read (counted from now: an outage longer
    /// than a lease does not drop them) or until they register again. A relay that leaves or
    /// dies is not kept: the epoch stays.
    pub fn carry_over(&self, read: FleetRead, now_ms: u64) -> Vec<RelayRecord> {
        let mut state = self.leased.lock().unwrap_or_else(PoisonError::into_inner);
        if state
            .epoch
            .as_ref()
            .is_some_and(|epoch| *epoch != read.epoch)
        {
            // Each for what was left of its lease at the last read, from now: no relay could
            // renew its lease while Redis was away, and each registers again at its next
            // heartbeat now that Redis answers (one that died meanwhile never does).
            let last_read_ms = state.last_read_ms;
            state.kept = state
                .last
                .iter()
                .filter(|l| l.record.state == RelayState::Active)
                .map(|l| Leased {
                    record: l.record.clone(),
                    until_ms: now_ms + l.until_ms.saturating_sub(last_read_ms).max(1_000),
                })
                .collect();
            tracing::info!(
                relays = state.kept.len(),
                "redis lost the relay fleet (restarted empty?): its relays are kept for what \
                 was left of their leases, or until they register again"
            );
        }
        state.epoch = Some(read.epoch);
        let mut relays = read.relays;
        state
            .kept
            .retain(|k| k.until_ms > now_ms && !relays.iter().any(|l| l.record.id == k.record.id));
        relays.extend(state.kept.iter().cloned());
        relays.sort_by(|a, b| a.record.id.cmp(&b.record.id));
        state.last.clone_from(&relays);
        state.last_read_ms = now_ms;
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

    /// How many relays rooms are given to are active (not draining).
    fn active(&self) -> usize {
        self.usable()
            .iter()
            .filter(|r| r.state == RelayState::Active)
            .count()
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
    // A new token at each read: one written now differs from any written before.
    let epoch = format!("{:016x}", rand::random::<u64>());
    let relays = match read_fleet(conn, now_ms, &epoch, timeout).await {
        Ok(read) => fleet.carry_over(read, now_ms),
        Err(e) => {
            tracing::debug!(error = %e, "could not read the relay fleet");
            return None;
        }
    };
    let active_before = fleet.active();
    let moved = fleet.update(relays, served);
    let active = fleet.active();
    if active == 0 && active_before > 0 {
        tracing::warn!(
            "the relay fleet has no active relay left that accepts this node's TURN \
             credentials: rooms get the --turn-url list (if any) until one registers, and \
             peers relayed through the fleet have no path meanwhile"
        );
    } else if active > 0 && active_before == 0 {
        tracing::info!(active, "the relay fleet has active relays");
    }
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
    fn relays_redis_lost_are_kept_until_their_leases_end_or_they_come_back() {
        let fleet = RelayFleet::new(None);
        let leased = |id: &str, state, until_ms| Leased {
            record: relay(id, state),
            until_ms,
        };
        let read = |epoch: &str, relays: Vec<Leased>| FleetRead {
            epoch: epoch.into(),
            relays,
        };
        let ids = |relays: Vec<RelayRecord>| relays.into_iter().map(|r| r.id).collect::<Vec<_>>();
        let three = vec![
            leased("a", RelayState::Active, 5_000),
            leased("b", RelayState::Draining, 5_000),
            leased("c", RelayState::Active, 2_000),
        ];
        assert_eq!(
            ids(fleet.carry_over(read("e1", three), 1_000)),
            ["a", "b", "c"]
        );
        // Relays that leave or die (same epoch) are not kept.
        let only_a = vec![leased("a", RelayState::Active, 5_000)];
        assert_eq!(ids(fleet.carry_over(read("e1", only_a), 1_200)), ["a"]);
        // Redis lost everything (a new epoch): the active ones are kept for what was left of
        // their leases at the last read (3,800 ms for a), from now...
        assert_eq!(ids(fleet.carry_over(read("e2", Vec::new()), 1_500)), ["a"]);
        assert_eq!(ids(fleet.carry_over(read("e2", Vec::new()), 5_200)), ["a"]);
        // ... or until they are back, as they now are.
        let back = vec![leased("a", RelayState::Draining, 9_000)];
        assert_eq!(
            fleet.carry_over(read("e2", back), 5_300)[0].state,
            RelayState::Draining
        );
        assert!(fleet.carry_over(read("e2", Vec::new()), 5_400).is_empty());
        // Lost after an outage longer than a lease: kept from the moment Redis answers.
        let d = vec![leased("d", RelayState::Active, 10_000)];
        assert_eq!(ids(fleet.carry_over(read("e2", d), 6_000)), ["d"]);
        assert_eq!(ids(fleet.carry_over(read("e3", Vec::new()), 20_000)), ["d"]);
        assert_eq!(ids(fleet.carry_over(read("e3", Vec::new()), 23_900)), ["d"]);
        assert!(fleet.carry_over(read("e3", Vec::new()), 24_100).is_empty());
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
