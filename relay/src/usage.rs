//! TURN usage accounting: the relayed traffic of every user (the `<user>` of a TURN REST
//! username, or the static user) per time bucket, for billing, served by the admin listener's
//! `/usage`. Workers drain their shard's counts (`relay_proto::Server::drain_usage`) into one
//! `UsageBook` on their publish tick (every 200 ms): totals are live, not only at the end of
//! an allocation.
//!
//! Memory is bounded: at most `retention / bucket + 1` buckets, each with at most `max_users`
//! users; traffic of further users in a bucket goes to its `other` entry and is counted
//! (`relay_usage_overflow_total`). Users are never metric labels.
//!
//! A fleet relay also publishes what changed to Redis (`UsageLedger::next_change`, sent by
//! `usage_publisher`); [`UsageReport::of_fleet`] reads it back for signaling's `/v1/usage`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::{self, Write as _};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet::usage::{BucketTotals, FleetUsage};
use relay_proto::Usage;
use serde::{Deserialize, Serialize};

/// `--usage-bucket`, `--usage-retention`, `--usage-max-users`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageLimits {
    /// The width of one bucket (the finest time resolution of a report).
    pub bucket: Duration,
    /// How long buckets are kept.
    pub retention: Duration,
    /// Distinct users kept per bucket; more go to `other`.
    pub max_users: usize,
}

impl UsageLimits {
    fn bucket_secs(&self) -> u64 {
        self.bucket.as_secs().max(1)
    }
}

/// One bucket: the users seen in `[start, start + bucket)`.
#[derive(Debug)]
struct Bucket {
    start: u64,
    users: HashMap<Box<str>, Usage>,
    other: Usage,
}

/// Usage per user per bucket (pure: the Unix time is passed in).
#[derive(Debug)]
pub struct UsageLedger {
    limits: UsageLimits,
    /// Oldest first.
    buckets: VecDeque<Bucket>,
    /// Records that found their bucket full of other users (counted into `other`).
    overflowed: u64,
    /// What changed and is not confirmed published yet, per bucket start; `None`
    /// unless the relay publishes to a fleet. A subset of the ledger: at most its entries.
    changes: Option<BTreeMap<u64, Changes>>,
}

/// The users (and whether `other`) of one bucket whose totals changed since they were last
/// confirmed published.
#[derive(Debug, Default)]
struct Changes {
    users: HashSet<Box<str>>,
    other: bool,
}

impl UsageLedger {
    /// An empty ledger.
    pub fn new(limits: UsageLimits) -> Self {
        Self {
            limits,
            buckets: VecDeque::new(),
            overflowed: 0,
            changes: None,
        }
    }

    /// (user, bucket) entries whose change is not published to the fleet yet (0 when the
    /// relay does not publish): what a Redis outage has held back.
    pub fn unpublished(&self) -> usize {
        self.changes
            .as_ref()
            .map_or(0, |c| c.values().map(|b| b.users.len()).sum())
    }

    /// The bucket width, retention and per-bucket cap.
    pub fn limits(&self) -> &UsageLimits {
        &self.limits
    }

    /// From now on, remember what changed for [`Self::next_change`] (a fleet relay's
    /// publication of its usage). What the ledger holds already (traffic relayed before the
    /// publisher started) counts as changed: it was never published.
    pub fn track_changes(&mut self) {
        if self.changes.is_none() {
            self.mark_all_changed();
        }
    }

    /// Everything the ledger holds counts as changed, to be published again: the fleet's
    /// Redis lost what was published (`fleet::usage::hold`).
    pub fn mark_all_changed(&mut self) {
        let held = self.buckets.iter().map(|bucket| {
            let changed = Changes {
                users: bucket.users.keys().cloned().collect(),
                other: !bucket.other.is_zero(),
            };
            (bucket.start, changed)
        });
        self.changes = Some(held.collect());
    }

    /// Every bucket's [`Self::next_change`], oldest first.
    #[cfg(test)]
    fn changes(&self) -> Vec<BucketTotals> {
        std::iter::successors(self.next_change(None), |b| self.next_change(Some(b.start))).collect()
    }

    /// The current totals of every user (and `other`) whose traffic changed since it was last
    /// [confirmed published](Self::confirm_published), in the oldest bucket that starts after
    /// `after` (the first with `None`). One bucket at a time: a publication copies one bucket's
    /// changes under the ledger's lock, not its whole backlog.
    pub fn next_change(&self, after: Option<u64>) -> Option<BucketTotals> {
        let changes = self.changes.as_ref()?;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        changes
            .range((from, Bound::Unbounded))
            .find_map(|(start, changed)| {
                let bucket = self.bucket(*start)?;
                let users = changed
                    .users
                    .iter()
                    .filter_map(|u| Some((u.to_string(), *bucket.users.get(u)?)))
                    .collect();
                Some(BucketTotals {
                    start: *start,
                    width: self.limits.bucket_secs(),
                    users,
                    other: if changed.other {
                        bucket.other
                    } else {
                        Usage::default()
                    },
                })
            })
    }

    /// `published` (a [`Self::next_change`]) is in the fleet's store: its users (and `other`)
    /// stop counting as changed, unless they changed again since (their totals here are higher
    /// now; totals only grow).
    pub fn confirm_published(&mut self, published: &BucketTotals) {
        let bucket = self.buckets.iter().find(|b| b.start == published.start);
        let (Some(bucket), Some(changes)) = (bucket, self.changes.as_mut()) else {
            return;
        };
        let Some(changed) = changes.get_mut(&published.start) else {
            return;
        };
        for (user, usage) in &published.users {
            if bucket.users.get(user.as_str()) == Some(usage) {
                changed.users.remove(user.as_str());
            }
        }
        if changed.other && bucket.other == published.other {
            changed.other = false;
        }
        if changed.users.is_empty() && !changed.other {
            changes.remove(&published.start);
        }
    }

    fn bucket(&self, start: u64) -> Option<&Bucket> {
        self.buckets.iter().find(|b| b.start == start)
    }

    /// Adds `usage` of `user` at `now_unix` (seconds).
    pub fn record(&mut self, now_unix: u64, user: &str, usage: Usage) {
        if usage.is_zero() {
            return;
        }
        let width = self.limits.bucket_secs();
        let start = now_unix - now_unix % width;
        let newest = self.buckets.back().map(|b| b.start);
        // A clock that stepped back keeps counting into the newest bucket.
        if newest.is_none_or(|newest| newest < start) {
            self.buckets.push_back(Bucket {
                start,
                users: HashMap::new(),
                other: Usage::default(),
            });
            self.drop_before(start.saturating_sub(self.limits.retention.as_secs()));
        }
        let Some(bucket) = self.buckets.back_mut() else {
            return;
        };
        let counted_as_user = if let Some(u) = bucket.users.get_mut(user) {
            u.add(&usage);
            true
        } else if bucket.users.len() < self.limits.max_users {
            bucket.users.insert(user.into(), usage);
            true
        } else {
            bucket.other.add(&usage);
            self.overflowed += 1;
            false
        };
        if let Some(changes) = self.changes.as_mut() {
            let changed = changes.entry(bucket.start).or_default();
            if !counted_as_user {
                changed.other = true;
            } else if !changed.users.contains(user) {
                changed.users.insert(user.into());
            }
        }
    }

    /// Drops the buckets past the retention at `now_unix`, traffic or not (a ledger that
    /// records nothing more would otherwise keep them).
    pub fn expire(&mut self, now_unix: u64) {
        let start = now_unix - now_unix % self.limits.bucket_secs();
        self.drop_before(start.saturating_sub(self.limits.retention.as_secs()));
    }

    /// Drops the buckets that start before `keep_from`, and their unpublished changes.
    fn drop_before(&mut self, keep_from: u64) {
        while self.buckets.front().is_some_and(|b| b.start < keep_from) {
            self.buckets.pop_front();
        }
        if let Some(changes) = self.changes.as_mut() {
            changes.retain(|start, _| *start >= keep_from);
        }
    }

    /// Records counted into `other` since start.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    /// (user, bucket) entries held now (what the memory bound counts).
    pub fn entries(&self) -> usize {
        self.buckets.iter().map(|b| b.users.len()).sum()
    }

    /// Totals over the buckets that start in `[from, to)` (Unix seconds; `from` is rounded
    /// down to its bucket's start).
    pub fn report(&self, from: u64, to: u64) -> UsageReport {
        let width = self.limits.bucket_secs();
        let from = from - from % width;
        let buckets = self
            .buckets
            .iter()
            .filter(|b| b.start >= from && b.start < to);
        UsageReport::of_buckets(
            from,
            to,
            width,
            buckets.map(|b| (b.users.iter().map(|(u, n)| (&**u, n)), &b.other)),
            self.overflowed,
        )
    }
}

/// The room of a user: the part of `ROOM:PEER` before its last `:` (the user part signaling
/// mints), or `None` for users without one (static users, other REST issuers).
pub fn room_of(user: &str) -> Option<&str> {
    user.rsplit_once(':')
        .map(|(room, _)| room)
        .filter(|r| !r.is_empty())
}

/// Counts of a report line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub bytes_to_peer: u64,
    pub bytes_to_client: u64,
    pub packets_to_peer: u64,
    pub packets_to_client: u64,
    /// `bytes_to_peer + bytes_to_client`.
    pub bytes: u64,
}

impl Counts {
    fn of(u: &Usage) -> Self {
        Self {
            bytes_to_peer: u.bytes_to_peer,
            bytes_to_client: u.bytes_to_client,
            packets_to_peer: u.packets_to_peer,
            packets_to_client: u.packets_to_client,
            bytes: u.bytes(),
        }
    }

    /// Adds `other` into this one.
    pub fn add(&mut self, other: &Self) {
        self.bytes_to_peer += other.bytes_to_peer;
        self.bytes_to_client += other.bytes_to_client;
        self.packets_to_peer += other.packets_to_peer;
        self.packets_to_client += other.packets_to_client;
        self.bytes += other.bytes;
    }
}

/// One user's totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserUsage {
    pub user: String,
    /// See [`room_of`].
    pub room: Option<String>,
    #[serde(flatten)]
    pub counts: Counts,
}

/// One room's totals (the sum of its users).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomUsage {
    pub room: String,
    /// Distinct users of the room in the window.
    pub users: u64,
    #[serde(flatten)]
    pub counts: Counts,
}

/// The answer of `/usage` (JSON; `format=csv` writes the same lines as CSV).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    /// Window start (Unix seconds, the start of its first bucket).
    pub from: u64,
    /// Window end (Unix seconds, exclusive).
    pub to: u64,
    /// Bucket width in seconds.
    pub bucket_secs: u64,
    /// Per user, sorted by user.
    pub users: Vec<UserUsage>,
    /// Per room, sorted by room.
    pub rooms: Vec<RoomUsage>,
    /// Traffic of users beyond `--usage-max-users` in a bucket.
    pub other: Counts,
    /// Records counted into `other` since the relay started.
    pub overflowed: u64,
}

impl UsageReport {
    /// A report from per-user totals (the rooms are derived).
    pub fn new(
        from: u64,
        to: u64,
        bucket_secs: u64,
        users: impl IntoIterator<Item = (String, Usage)>,
        other: Usage,
        overflowed: u64,
    ) -> Self {
        let users: Vec<UserUsage> = users
            .into_iter()
            .map(|(user, usage)| UserUsage {
                room: room_of(&user).map(str::to_owned),
                user,
                counts: Counts::of(&usage),
            })
            .collect();
        let mut report = Self {
            from,
            to,
            bucket_secs,
            users,
            rooms: Vec::new(),
            other: Counts::of(&other),
            overflowed,
        };
        report.derive_rooms();
        report
    }

    /// The totals of `buckets` (each: its users' usage and its `other`) over `[from, to)`.
    fn of_buckets<'a, U>(
        from: u64,
        to: u64,
        bucket_secs: u64,
        buckets: impl Iterator<Item = (U, &'a Usage)>,
        overflowed: u64,
    ) -> Self
    where
        U: Iterator<Item = (&'a str, &'a Usage)>,
    {
        let mut users: BTreeMap<&str, Usage> = BTreeMap::new();
        let mut other = Usage::default();
        for (bucket_users, bucket_other) in buckets {
            for (user, usage) in bucket_users {
                users.entry(user).or_default().add(usage);
            }
            other.add(bucket_other);
        }
        let users = users.into_iter().map(|(u, usage)| (u.to_owned(), usage));
        Self::new(from, to, bucket_secs, users, other, overflowed)
    }

    /// The fleet relays' published usage ([`fleet::usage::read`] over `[from, to)`) as a
    /// report; `from` is rounded down to its bucket's start.
    pub fn of_fleet(fleet: &FleetUsage, from: u64, to: u64) -> Self {
        let width = fleet.buckets.first().map_or(60, |b| b.width.max(1));
        let buckets = fleet.buckets.iter().map(|b| {
            let users = b.users.iter().map(|(u, n)| (u.as_str(), n));
            (users, &b.other)
        });
        Self::of_buckets(from - from % width, to, width, buckets, fleet.overflowed)
    }

    fn derive_rooms(&mut self) {
        let mut rooms: BTreeMap<&str, RoomUsage> = BTreeMap::new();
        for u in &self.users {
            let Some(room) = u.room.as_deref() else {
                continue;
            };
            let entry = rooms.entry(room).or_insert_with(|| RoomUsage {
                room: room.to_owned(),
                users: 0,
                counts: Counts::default(),
            });
            entry.users += 1;
            entry.counts.add(&u.counts);
        }
        self.rooms = rooms.into_values().collect();
    }

    /// Adds the lines of `other` (another relay's report over the same window) into this one.
    pub fn merge(&mut self, other: &Self) {
        let mut users: BTreeMap<String, UserUsage> =
            self.users.drain(..).map(|u| (u.user.clone(), u)).collect();
        for u in &other.users {
            users
                .entry(u.user.clone())
                .and_modify(|mine| mine.counts.add(&u.counts))
                .or_insert_with(|| u.clone());
        }
        self.users = users.into_values().collect();
        self.other.add(&other.other);
        self.overflowed += other.overflowed;
        self.derive_rooms();
    }

    /// The report as CSV: one line per user (`by_room`: per room), with a header, and a last
    /// line `(other)` when the window's `other` is not all zeros.
    pub fn to_csv(&self, by_room: bool) -> String {
        let mut out = String::new();
        let counts = "bytes_to_peer,bytes_to_client,packets_to_peer,packets_to_client,bytes";
        let (from, to) = (self.from, self.to);
        // Every line, the `(other)` one too: the window, the two columns that name what it
        // counts (already CSV), then the counts.
        let line = |out: &mut String, name: &str, detail: &dyn fmt::Display, c: &Counts| {
            let _ = writeln!(
                out,
                "{from},{to},{name},{detail},{},{},{},{},{}",
                c.bytes_to_peer, c.bytes_to_client, c.packets_to_peer, c.packets_to_client, c.bytes
            );
        };
        if by_room {
            let _ = writeln!(out, "from,to,room,users,{counts}");
            for r in &self.rooms {
                line(&mut out, &csv(&r.room), &r.users, &r.counts);
            }
        } else {
            let _ = writeln!(out, "from,to,user,room,{counts}");
            for u in &self.users {
                let room = csv(u.room.as_deref().unwrap_or(""));
                line(&mut out, &csv(&u.user), &room, &u.counts);
            }
        }
        if self.other != Counts::default() {
            let blank = if by_room { "0" } else { "" };
            line(&mut out, "(other)", &blank, &self.other);
        }
        out
    }
}

/// A CSV field (RFC 4180): quoted when it holds a comma, a quote or a line break.
fn csv(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

/// The relay's ledger, shared by the workers (writers, on their publish tick) and the admin
/// server (reader). The lock is held for one drain or one report, never across `.await`.
#[derive(Debug)]
pub struct UsageBook {
    ledger: Mutex<UsageLedger>,
}

impl UsageBook {
    /// An empty book.
    pub fn new(limits: UsageLimits) -> Self {
        Self {
            ledger: Mutex::new(UsageLedger::new(limits)),
        }
    }

    /// The ledger, for a drain or a report.
    pub fn lock(&self) -> MutexGuard<'_, UsageLedger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Totals over `[from, to)` (Unix seconds).
    pub fn report(&self, from: u64, to: u64) -> UsageReport {
        self.lock().report(from, to)
    }
}

/// The current Unix time in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(to_peer: u64, to_client: u64) -> Usage {
        Usage {
            bytes_to_peer: to_peer,
            bytes_to_client: to_client,
            packets_to_peer: 1,
            packets_to_client: 1,
        }
    }

    fn ledger(max_users: usize) -> UsageLedger {
        UsageLedger::new(UsageLimits {
            bucket: Duration::from_secs(60),
            retention: Duration::from_secs(600),
            max_users,
        })
    }

    #[test]
    fn totals_per_user_and_room_over_a_window() {
        let mut l = ledger(10);
        l.record(1_000, "r1:aa", usage(10, 20));
        l.record(1_010, "r1:aa", usage(1, 2));
        l.record(1_070, "r1:bb", usage(100, 0));
        l.record(1_130, "alice", usage(5, 5));
        let all = l.report(0, u64::MAX);
        assert_eq!(all.users.len(), 3);
        assert_eq!(all.users[0].user, "alice");
        assert_eq!(all.users[0].room, None);
        assert_eq!(all.users[1].counts.bytes, 33);
        assert_eq!(all.rooms.len(), 1);
        assert_eq!((all.rooms[0].users, all.rooms[0].counts.bytes), (2, 133));
        // Only the bucket starting at 1020 (the second minute): rounded down to 1020.
        let one = l.report(1_030, 1_080);
        assert_eq!(one.from, 1_020);
        assert_eq!(one.users.len(), 1);
        assert_eq!(one.users[0].user, "r1:bb");
    }

    #[test]
    fn buckets_past_the_retention_expire_without_new_traffic() {
        let mut l = ledger(10);
        l.record(1_000, "r1:aa", usage(10, 20));
        l.expire(1_000 + 600);
        assert_eq!(l.entries(), 1, "within the retention");
        l.expire(1_000 + 700);
        assert_eq!(l.entries(), 0, "past it, though nothing was recorded since");
        assert!(l.report(0, u64::MAX).users.is_empty());
    }

    #[test]
    fn users_beyond_the_cap_go_to_other_and_old_buckets_expire() {
        let mut l = ledger(2);
        l.record(0, "a:1", usage(1, 0));
        l.record(0, "a:2", usage(1, 0));
        l.record(0, "a:3", usage(7, 0));
        l.record(0, "a:1", usage(1, 0));
        assert_eq!(l.overflowed(), 1);
        assert_eq!(l.entries(), 2);
        let r = l.report(0, 60);
        assert_eq!(r.other.bytes, 7);
        assert_eq!(r.users[0].counts.bytes, 2);
        let csv = r.to_csv(false);
        assert!(csv.starts_with("from,to,user,room,bytes_to_peer"), "{csv}");
        assert!(csv.contains("\n0,60,(other),,7,0,1,1,7\n"), "{csv}");
        // Eleven minutes later the first bucket is gone.
        l.record(660, "b:1", usage(1, 1));
        assert_eq!(l.entries(), 1);
        assert_eq!(l.report(0, u64::MAX).other.bytes, 0);
    }

    #[test]
    fn what_was_relayed_before_tracking_started_counts_as_changed() {
        let mut l = ledger(1);
        l.record(0, "a:1", usage(1, 0));
        l.record(0, "a:2", usage(2, 0));
        l.record(70, "a:1", usage(4, 0));
        l.track_changes();
        let changes = l.changes();
        let users: Vec<(&str, u64)> = changes
            .iter()
            .flat_map(|b| b.users.iter().map(|(u, n)| (u.as_str(), n.bytes_to_peer)))
            .collect();
        assert_eq!(users, [("a:1", 1), ("a:1", 4)]);
        assert_eq!(changes[0].other, usage(2, 0), "a:2 went to other");
        assert_eq!(l.unpublished(), 2);
    }

    #[test]
    fn changes_are_totals_until_confirmed_published_unless_they_changed_again() {
        let mut l = ledger(1);
        l.record(0, "a:1", usage(1, 0));
        assert!(l.changes().is_empty(), "not tracked before track_changes");
        l.track_changes();
        l.record(10, "a:1", usage(2, 0));
        l.record(20, "a:2", usage(5, 0));
        l.record(70, "a:1", usage(4, 0));
        let to_peer = |users: &[(String, Usage)]| -> Vec<(String, u64)> {
            users
                .iter()
                .map(|(u, n)| (u.clone(), n.bytes_to_peer))
                .collect()
        };
        let changes = l.changes();
        assert_eq!(changes.len(), 2);
        assert_eq!((changes[0].start, changes[0].width), (0, 60));
        assert_eq!(to_peer(&changes[0].users), [("a:1".to_owned(), 3)]);
        assert_eq!(changes[0].other, usage(5, 0), "a:2 went to other");
        assert_eq!(to_peer(&changes[1].users), [("a:1".to_owned(), 4)]);
        assert_eq!(l.unpublished(), 2, "a:1 in both buckets");
        // Until confirmed (a publication that failed or was dropped), they stay changes.
        assert_eq!(l.changes(), changes);
        // The first bucket is confirmed; the second changed again while it was published.
        l.record(80, "a:1", usage(1, 0));
        l.confirm_published(&changes[0]);
        l.confirm_published(&changes[1]);
        let again = l.changes();
        assert_eq!(again.len(), 1);
        assert_eq!(to_peer(&again[0].users), [("a:1".to_owned(), 5)]);
        l.confirm_published(&again[0]);
        assert!(l.changes().is_empty());
        assert_eq!(l.unpublished(), 0);
        // Redis lost what was published: all of it is a change again, at its current totals.
        l.mark_all_changed();
        let all = l.changes();
        assert_eq!(all.len(), 2);
        assert_eq!(to_peer(&all[0].users), [("a:1".to_owned(), 3)]);
        assert_eq!(all[0].other, usage(5, 0));
        assert_eq!(to_peer(&all[1].users), [("a:1".to_owned(), 5)]);
        for bucket in &all {
            l.confirm_published(bucket);
        }
        assert_eq!(l.unpublished(), 0);
        // Changes of buckets past the retention are dropped with them.
        l.record(90, "a:1", usage(1, 0));
        l.record(6_000, "b:1", usage(1, 0));
        let late = l.changes();
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].start, 6_000);
        let fleet = FleetUsage {
            buckets: late,
            overflowed: 2,
        };
        let report = UsageReport::of_fleet(&fleet, 6_010, 7_000);
        assert_eq!((report.from, report.bucket_secs), (6_000, 60));
        assert_eq!(report.users[0].counts.bytes, 1);
        assert_eq!(report.overflowed, 2);
    }

    #[test]
    fn reports_merge_and_csv_quotes() {
        let mut a = UsageReport::new(
            0,
            60,
            60,
            [("r:x".to_owned(), usage(1, 1))],
            Usage::default(),
            0,
        );
        let b = UsageReport::new(
            0,
            60,
            60,
            [
                ("r:x".to_owned(), usage(2, 2)),
                ("q,\"z\"".to_owned(), usage(1, 0)),
            ],
            Usage::default(),
            0,
        );
        a.merge(&b);
        assert_eq!(a.users.len(), 2);
        assert_eq!(a.rooms[0].counts.bytes, 6);
        assert!(a.to_csv(false).contains("\"q,\"\"z\"\"\""));
        assert!(a.to_csv(true).contains("0,60,r,1,3,3,2,2,6"));
    }
}
