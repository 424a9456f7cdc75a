//! Node leases: each node renews its lease every heartbeat; the sessions of a node whose lease
//! ran out are adopted (parked) by another; the TTLs of the rooms a node serves are renewed;
//! each node's index of its sessions is reconciled with what it holds.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt as _;

use super::store::{Op, Reply, StoreError};
use super::{
    ClusterHub, LocalState, ParkedHere, index_entry, node_sessions_key, parse_index_entry, sid,
    unix_ms,
};
use crate::hub::{ConnId, SessionKey};
use crate::metrics::Outage;
use crate::protocol::{LeaveReason, RoomId};

/// The key of the lease table: node id -> lease expiry (unix ms).
pub(super) const NODES_KEY: &str = "sig:nodes";

impl ClusterHub {
    /// Leaves the cluster at shutdown: the lease is given up at once, so another node adopts
    /// the sessions still parked here (and expires them if nobody resumes). It is never renewed
    /// again, although the process may outlive this (an in-process relay still draining): a
    /// renewal would take the lease back from the node adopting the sessions, or find it gone
    /// and count an outage.
    pub async fn leave(&self) {
        // A renewal under way ends first; none starts after.
        *self.lease_given_up.lock().await = true;
        let cmd = redis::cmd("ZADD")
            .arg(NODES_KEY)
            .arg(0)
            .arg(&self.cluster.node_id)
            .to_owned();
        if let Err(e) = self.store.query::<i64>(&cmd).await {
            tracing::warn!(error = %e, "could not give up the lease");
        }
    }

    /// Renews the lease every `--node-heartbeat`, and hands each renewal to [`Self::upkeep`],
    /// a task of its own: the renewal never waits for work whose length grows with what the
    /// node holds (a node of 10,000 rooms or stale index entries that renewed only after
    /// touching or reconciling them all outlived its lease, and another node adopted its
    /// sessions).
    pub(super) async fn heartbeats(self: Arc<Self>) {
        let (mut renewed, renewals) = tokio::sync::watch::channel(Vec::new());
        tokio::spawn(Arc::clone(&self).upkeep(renewals));
        let mut ticker = tokio::time::interval(self.cluster.heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if renewed.is_closed() {
                // The upkeep task ended (it never returns: it panicked). A node that renews
                // its lease without it would let its rooms expire under live sessions.
                tracing::error!("the cluster upkeep task ended: starting it again");
                let (again, renewals) = tokio::sync::watch::channel(Vec::new());
                renewed = again;
                tokio::spawn(Arc::clone(&self).upkeep(renewals));
            }
            if let Some(dead) = self.renew_lease().await {
                renewed.send_replace(dead);
            }
        }
    }

    /// After each renewal of the lease (the latest one when it falls behind): what parks,
    /// leaves and adoptions wait for Redis, then, when due, the rooms' TTLs and the index.
    async fn upkeep(self: Arc<Self>, mut renewals: tokio::sync::watch::Receiver<Vec<String>>) {
        let touch_every = (self.store_ttl() / 4).max(self.cluster.heartbeat);
        // Longer than any join, resume or adoption takes (a few Redis calls, each within
        // `--redis-timeout`): an entry unknown at two rounds is no request in flight.
        let reconcile_every = (self.cluster.redis_timeout * 4).max(self.cluster.lease);
        let (mut last_touch, mut last_reconcile) = (Instant::now(), Instant::now());
        while renewals.changed().await.is_ok() {
            let dead = renewals.borrow_and_update().clone();
            self.after_renewal(&dead).await;
            if self.store_ok.load(Ordering::Acquire) && last_touch.elapsed() >= touch_every {
                last_touch = Instant::now();
                self.touch_rooms().await;
            }
            if self.store_ok.load(Ordering::Acquire) && last_reconcile.elapsed() >= reconcile_every
            {
                last_reconcile = Instant::now();
                self.reconcile_index().await;
            }
        }
    }

    /// When the sessions adopted now end if their clients do not resume: the grace period,
    /// plus the ping timeout from now. A client whose node went silent (frozen, cut off, its
    /// power lost) notices only when its pings go unanswered that long; the grace counted from
    /// the adoption alone (a lease after the silence) would end before many of them came back.
    fn adopted_until_ms(&self) -> u64 {
        let wait = self.settings.resume_grace + self.settings.ping_timeout;
        unix_ms(SystemTime::now()) + wait.as_millis() as u64
    }

    pub(super) fn store_ttl(&self) -> Duration {
        self.settings.resume_grace + Duration::from_secs(60)
    }

    /// Renews the lease, notices Redis coming back, and adopts the sessions of dead nodes (at
    /// start-up; then [`Self::heartbeats`] does each in its own task).
    pub(super) async fn heartbeat(&self) {
        if let Some(dead) = self.renew_lease().await {
            self.after_renewal(&dead).await;
        }
    }

    /// Renews the lease and notices Redis coming back: the nodes whose lease ran out, or
    /// `None` when Redis did not answer or the node gave its lease up.
    async fn renew_lease(&self) -> Option<Vec<String>> {
        let given_up = self.lease_given_up.lock().await;
        if *given_up {
            return None;
        }
        let now_ms = unix_ms(SystemTime::now());
        let me = &self.cluster.node_id;
        let lease_until = now_ms + self.cluster.lease.as_millis() as u64;
        let ttl = self.store_ttl().as_millis() as u64;
        let agreed = self.cluster.agreed_turn_secret.as_ref();
        let mut renew_cmd = redis::cmd("ZADD");
        renew_cmd.arg(NODES_KEY).arg(lease_until).arg(me);
        let mut keep_nodes = redis::cmd("PEXPIRE");
        keep_nodes.arg(NODES_KEY).arg(ttl);
        let mut keep_index = redis::cmd("PEXPIRE");
        keep_index.arg(node_sessions_key(me)).arg(ttl);
        let mut count_live = redis::cmd("ZCOUNT");
        count_live
            .arg(NODES_KEY)
            .arg(format!("({now_ms}"))
            .arg("+inf");
        let mut list_dead = redis::cmd("ZRANGEBYSCORE");
        list_dead.arg(NODES_KEY).arg("-inf").arg(now_ms);
        // All at once, in about one round trip: one after the other, they took seven, and on a
        // slow link (a 1 s round trip, each call well within `--redis-timeout`) the renewals
        // came further apart than the lease, and the node was taken for dead.
        let renew = async {
            let (added, _, _, (), (), live, dead) = tokio::try_join!(
                self.store.query::<i64>(&renew_cmd),
                self.store.query::<i64>(&keep_nodes),
                self.store.query::<i64>(&keep_index),
                self.store.check_broadcasts(),
                self.store.keep_turn_secret(agreed.map(|s| s.expose_str())),
                self.store.query::<u64>(&count_live),
                self.store.query::<Vec<String>>(&list_dead),
            )?;
            if added == 1 && self.registered.swap(true, Ordering::AcqRel) {
                // Our entry was gone: another node found our lease expired (we were too slow,
                // or cut off) and adopted our sessions. Our sockets no longer get their frames:
                // cut them so their clients resume (on any node, this one included).
                tracing::error!(
                    "this node's lease was gone from redis (it expired and another node adopted \
                     its sessions, or redis lost its data): closing its sockets"
                );
                self.outage(Outage::LeaseLost);
            }
            Ok::<_, StoreError>((live, dead))
        };
        let dead = match renew.await {
            Ok((live, dead)) => {
                self.metrics.cluster_nodes(live);
                dead
            }
            Err(e) => {
                self.store_failed("heartbeat", &e);
                return None;
            }
        };
        if self.subscribed.load(Ordering::Acquire) {
            // Whole again: the next failure is a new outage.
            self.in_outage.store(false, Ordering::Release);
        }
        if !self.store_ok.swap(true, Ordering::AcqRel) {
            tracing::info!("redis answers again");
            // No node could renew its lease while Redis was away (or restarting from its
            // saved data): every lease may read expired now. Give the live nodes one lease to
            // renew theirs before taking any node for dead.
            self.lock().adopt_after = Some(Instant::now() + self.cluster.lease);
        }
        Some(dead)
    }

    /// What waited for Redis to answer: parks and leaves that failed, nodes put back among
    /// the dead; then the adoption of `dead`'s sessions.
    async fn after_renewal(&self, dead: &[String]) {
        let me = &self.cluster.node_id;
        // A few at once, as adoptions go: an outage may have cut thousands of sockets, and
        // the adoptions and the rooms' upkeep wait for these.
        let pending = std::mem::take(&mut self.lock().pending_park);
        futures_util::stream::iter(pending)
            .for_each_concurrent(32, |p| self.park(p))
            .await;
        self.retry_leaves().await;
        self.readopt().await;
        let may_adopt = self
            .lock()
            .adopt_after
            .is_none_or(|after| Instant::now() >= after);
        if may_adopt {
            for node in dead.iter().filter(|n| *n != me) {
                self.adopt(node).await;
            }
        }
    }

    /// Takes over the sessions of a dead node (only one node wins the `ZREM`).
    pub(super) async fn adopt(&self, dead: &str) {
        // Read before the `ZREM`: a node that won it must have the list (a dead node adds
        // nothing to its index).
        let Some(members) = self.index_entries(dead, "adopt").await else {
            return;
        };
        // Only while its lease is still out: `dead` was read at a renewal that may be some
        // time ago (this node's upkeep may lag), and the node may have renewed since.
        let won = self
            .store
            .remove_if_score_at_most(NODES_KEY, dead, unix_ms(SystemTime::now()))
            .await;
        if !matches!(won, Ok(true)) {
            return;
        }
        tracing::warn!(
            node = dead,
            sessions = members.len(),
            "node gone (its lease ran out, or it drained and gave it up): adopting its sessions"
        );
        let expires_ms = self.adopted_until_ms();
        // A session Redis did not answer for is neither adopted nor refused: the dead node's
        // index is kept for another try.
        let unanswered = AtomicBool::new(false);
        let unanswered = &unanswered;
        // A few scripts in flight at once: a dead node may have served thousands of sessions.
        futures_util::stream::iter(members)
            .for_each_concurrent(32, |member| async move {
                let Some((room, key)) = parse_index_entry(&member) else {
                    return;
                };
                // Indexed first: if this node dies too, the session must still be found.
                let Ok(added) = self.index_add(&room, key).await else {
                    unanswered.store(true, Ordering::Relaxed);
                    return;
                };
                let reply = self.call_adopt(&room, key, dead, expires_ms).await;
                // Refused: not adopted. Unanswered: it may still be (see `reconcile_index`).
                if added && matches!(&reply, Ok(reply) if reply.status != "ok") {
                    self.index_remove(&self.cluster.node_id, &room, key).await;
                }
                if reply.is_err() {
                    unanswered.store(true, Ordering::Relaxed);
                }
                if let Ok(reply) = reply
                    && reply.status == "ok"
                {
                    self.metrics.cluster_session_adopted();
                    park_adopted(&mut self.lock(), key, room, &reply, expires_ms);
                }
            })
            .await;
        if unanswered.load(Ordering::Relaxed) {
            // Among the dead again: the next heartbeat that reaches Redis (this node's or
            // another's) adopts what is left.
            self.lock().unadopted.push(dead.to_owned());
            self.readopt().await;
        } else {
            let cmd = redis::cmd("DEL").arg(node_sessions_key(dead)).to_owned();
            let _ = self.store.query::<i64>(&cmd).await;
        }
        let st = self.lock();
        self.update_gauges(&st);
    }

    /// Puts the nodes of [`super::LocalState::unadopted`] back among the dead (`NX`: one that
    /// renewed its lease meanwhile is alive); those Redis did not take stay for the next
    /// heartbeat.
    async fn readopt(&self) {
        let nodes = std::mem::take(&mut self.lock().unadopted);
        for node in nodes {
            let cmd = redis::cmd("ZADD")
                .arg(NODES_KEY)
                .arg("NX")
                .arg(0)
                .arg(&node)
                .to_owned();
            if self.store.query::<i64>(&cmd).await.is_err() {
                self.lock().unadopted.push(node);
            }
        }
    }

    /// Refreshes the TTL of every room this node serves.
    pub(super) async fn touch_rooms(&self) {
        let rooms: Vec<RoomId> = self.lock().rooms.keys().cloned().collect();
        // The sessions attached here whose join Redis confirmed (a joining one has no peer id
        // yet: its key may not be written yet), each with its connection.
        let mut attached: HashMap<RoomId, Vec<(SessionKey, ConnId)>> = HashMap::new();
        for (key, session) in &self.lock().attached {
            if !session.peer.as_str().is_empty() && !session.ending {
                let conns = attached.entry(session.room.clone()).or_default();
                conns.push((*key, session.conn));
            }
        }
        let rooms = rooms.into_iter().map(|room| {
            let sessions = attached.remove(&room).unwrap_or_default();
            (room, sessions)
        });
        // A node may serve tens of thousands of rooms; after a failure, the next round is a
        // TTL's quarter later.
        self.each_until_failure(rooms, "touch", |(room, sessions)| async move {
            let sids: Vec<String> = sessions.iter().map(|(key, _)| sid(*key)).collect();
            let args: Vec<&str> = sids.iter().map(String::as_str).collect();
            let reply = self.store.call(Op::Touch, &room, &args).await?;
            for (key, conn) in &sessions {
                if reply.rest.contains(&sid(*key)) {
                    self.session_vanished(*key, Some(*conn));
                }
            }
            Ok(())
        })
        .await;
    }

    /// Runs `step` on each of `items`, a few (32) at a time: the first failure is counted as
    /// one of `what` and ends the round (the steps not started are skipped).
    async fn each_until_failure<T, F, Fut>(
        &self,
        items: impl IntoIterator<Item = T>,
        what: &str,
        step: F,
    ) where
        F: Fn(T) -> Fut,
        Fut: Future<Output = Result<(), StoreError>>,
    {
        let failed = AtomicBool::new(false);
        let (failed, step) = (&failed, &step);
        futures_util::stream::iter(items)
            .for_each_concurrent(32, |item| async move {
                if failed.load(Ordering::Relaxed) {
                    return;
                }
                if let Err(e) = step(item).await
                    && !failed.swap(true, Ordering::Relaxed)
                {
                    self.store_failed(what, &e);
                }
            })
            .await;
    }

    /// Runs the adopt script: session `key` of `room`, attached to node `from` (a dead node,
    /// or this one for an orphan), is parked here until `expires_ms` (or the deadline an
    /// earlier parking set).
    async fn call_adopt(
        &self,
        room: &RoomId,
        key: SessionKey,
        from: &str,
        expires_ms: u64,
    ) -> Result<Reply, StoreError> {
        let (session, now_ms) = (sid(key), unix_ms(SystemTime::now()).to_string());
        let expires_ms = expires_ms.to_string();
        let args = [
            session.as_str(),
            from,
            self.cluster.node_id.as_str(),
            &expires_ms,
            &now_ms,
        ];
        self.store.call(Op::Adopt, room, &args).await
    }

    /// The entries of `node`'s index of sessions; `None` (counted as a failure of `what`) when
    /// Redis did not answer.
    async fn index_entries(&self, node: &str, what: &str) -> Option<HashSet<String>> {
        match self.store.set_members(&node_sessions_key(node)).await {
            Ok(entries) => Some(entries),
            Err(e) => {
                self.store_failed(what, &e);
                None
            }
        }
    }

    /// Reconciles this node's index (the sessions another node adopts if this one dies) with
    /// the sessions it holds. Redis may run a join or resume after its node gave up waiting
    /// (it was frozen, or slow): the session is then attached to this node, which neither
    /// serves it nor renews it, and the others would see a peer nobody holds for as long as
    /// the room lives. An entry that names no session held here, at this round and the one
    /// before (no request takes that long), is adopted by this node as a dead node's would
    /// be: parked, for its client to resume or to leave after the grace period. An entry for
    /// a session that is not this node's (ended, or moved away) is removed. A session held here
    /// that the index does not list is put back: two sockets resuming it at once on two nodes
    /// may leave it here while the other node, done last, removes this node's entry.
    pub(super) async fn reconcile_index(&self) {
        let me = &self.cluster.node_id;
        // Only these can be found unlisted: the index is read in pieces, and an entry added
        // meanwhile (a join) may not be in what was read.
        let held_before: HashSet<SessionKey> = {
            let st = self.lock();
            st.attached
                .keys()
                .chain(st.parked.keys())
                .copied()
                .collect()
        };
        let Some(listed) = self.index_entries(me, "reconcile").await else {
            return;
        };
        let (orphans, unlisted): (Vec<IndexedSession>, Vec<IndexedSession>) = {
            let mut st = self.lock();
            let unknown: HashSet<String> = listed
                .iter()
                .filter(|entry| parse_index_entry(entry).is_some_and(|(_, key)| !st.knows(key)))
                .cloned()
                .collect();
            let twice = unknown
                .intersection(&st.index_suspects)
                .filter_map(|entry| parse_index_entry(entry))
                .collect();
            st.index_suspects = unknown;
            let held = st.attached.iter().map(|(key, s)| (&s.room, *key));
            let unlisted = held
                .chain(st.parked.iter().map(|(key, p)| (&p.room, *key)))
                .filter(|(room, key)| {
                    held_before.contains(key) && !listed.contains(&index_entry(room, *key))
                })
                .map(|(room, key)| (room.clone(), key))
                .collect();
            (twice, unlisted)
        };
        for (room, key) in unlisted {
            tracing::warn!(session = %sid(key), %room, "a session held here was not in this node's index: added");
            // Failed: the next round tries again.
            let _ = self.index_add(&room, key).await;
        }
        // Its client is not waiting on a silent node (its request went unanswered, or it
        // left): the grace alone.
        let expires_ms = unix_ms(SystemTime::now()) + self.settings.resume_grace.as_millis() as u64;
        // A long outage may leave many.
        self.each_until_failure(orphans, "reconcile", |(room, key)| {
            self.adopt_orphan(room, key, expires_ms)
        })
        .await;
    }

    /// Parks here `key`, found in this node's index but held nowhere here, unless it is
    /// unknown to Redis (ended, or moved away: its entry is removed).
    async fn adopt_orphan(
        &self,
        room: RoomId,
        key: SessionKey,
        expires_ms: u64,
    ) -> Result<(), StoreError> {
        let me = &self.cluster.node_id;
        {
            // Unknown still, and no resume of it may start until it is parked.
            let mut st = self.lock();
            if st.knows(key) {
                return Ok(());
            }
            st.reconciling.insert(key);
        }
        let reply = self.call_adopt(&room, key, me, expires_ms).await;
        let (parked, known) = {
            let mut st = self.lock();
            // Parked here before a resume of it may start.
            st.reconciling.remove(&key);
            let parked = matches!(&reply, Ok(reply) if reply.status == "ok");
            if let Ok(reply) = &reply
                && parked
            {
                park_adopted(&mut st, key, room.clone(), reply, expires_ms);
                self.update_gauges(&st);
            }
            (parked, st.knows(key))
        };
        reply?;
        if parked {
            tracing::warn!(
                session = %sid(key),
                %room,
                "a session redis attached to this node, not held here: parked"
            );
            self.metrics.cluster_session_orphaned();
        } else if !known {
            // Not this node's (ended, or moved away).
            self.index_remove(me, &room, key).await;
        }
        Ok(())
    }
}

/// A session as this node's index names it.
type IndexedSession = (RoomId, SessionKey);

/// Parks here a session the adopt script gave this node, until the deadline the script
/// returned (one an earlier parking set), else `expires_ms`.
fn park_adopted(
    st: &mut LocalState,
    key: SessionKey,
    room: RoomId,
    reply: &Reply,
    expires_ms: u64,
) {
    let expires_ms = reply
        .rest
        .first()
        .and_then(|e| e.parse().ok())
        .unwrap_or(expires_ms);
    let parked = ParkedHere {
        room,
        expires_ms,
        reason: LeaveReason::Disconnected,
        ticket: None,
    };
    st.park(key, parked);
}
