//! The sessions of one process: which socket each is attached to, which are parked and until
//! when, and the tombstones of sessions that ended with an error. Pure state: the time of each
//! operation is passed in.

use crate::api::Transport;
use crate::peer_stats::PeerLinks;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::client_ip::SessionTicket;
use crate::hub::{ConnId, SessionKey};
use crate::memory_budget::MemoryBudget;
use crate::outbound::OutboundTx;
use crate::outbox::Outbox;
use crate::protocol::{ClientSeq, ErrorCode, LeaveReason, PeerId, RoomId};
use crate::resume::ResumeSecret;

/// Where a session's frames go.
#[derive(Debug)]
pub enum Link {
    /// To the socket `conn`, through its bounded queue.
    Attached { conn: ConnId, tx: OutboundTx },
    /// Nowhere until a resume; the session ends at `expires` with `reason`.
    Parked {
        expires: Instant,
        reason: LeaveReason,
    },
}

/// One joined peer.
#[derive(Debug)]
pub struct Session {
    pub peer: PeerId,
    pub name: Option<String>,
    pub room: RoomId,
    pub version: u32,
    pub secret: ResumeSecret,
    pub outbox: Outbox,
    pub link: Link,
    /// When fresh TURN credentials are due (80% of their TTL), if they expire at all.
    pub ice_refresh_at: Option<Instant>,
    /// The session's place among its client address's (given back when it ends).
    pub ticket: Option<SessionTicket>,
    /// How the client joined.
    pub transport: Transport,
    /// When it joined (the admin API's connected time; time to ICE connected is measured from
    /// here).
    pub joined_at: Instant,
    /// Its latest `stats` report per other peer.
    pub links: PeerLinks,
    /// The highest `cseq` it handled (0: none yet).
    pub received: ClientSeq,
    /// Since when it has held frames it did not acknowledge (`None`: it acknowledged all it
    /// was sent); each acknowledgement moves it on. Past the memory budget, the sessions that
    /// stopped acknowledging end first ([`ACK_OVERDUE`]).
    pub unacked_since: Option<Instant>,
}

/// How long a session may hold frames without acknowledging any before the memory budget
/// takes it for one that stopped reading: clients acknowledge within 200 ms or 16 frames
/// (`client_rules`), so a second is well past that.
pub const ACK_OVERDUE: Duration = Duration::from_secs(1);

impl Session {
    /// Notes frames sent at `now` (the oldest unacknowledged one's time stays).
    pub fn sent(&mut self, now: Instant) {
        self.unacked_since.get_or_insert(now);
    }

    /// Takes an acknowledgement of every frame up to `seq` at `now`: they leave the replay
    /// buffer, their bytes go back to `memory`, and what it still holds counts from now.
    pub fn acknowledge(&mut self, seq: u64, now: Instant, memory: &MemoryBudget) {
        let before = self.outbox.bytes();
        self.outbox.ack(seq);
        memory.resize(before, self.outbox.bytes());
        self.unacked_since = (self.outbox.bytes() > 0).then_some(now);
    }

    /// Whether it has held frames without acknowledging any for [`ACK_OVERDUE`] at `now`.
    pub fn ack_overdue(&self, now: Instant) -> bool {
        self.unacked_since
            .is_some_and(|since| now.saturating_duration_since(since) >= ACK_OVERDUE)
    }
}

impl Session {
    /// Whether a frame numbered `cseq` is new, recording it as handled; a frame numbered at or
    /// below the highest handled is a duplicate (a client sent it again after a dropped link).
    /// An unnumbered frame is always new.
    pub fn first_sight(&mut self, cseq: Option<ClientSeq>) -> bool {
        match cseq {
            Some(n) if n <= self.received => false,
            Some(n) => {
                self.received = n;
                true
            }
            None => true,
        }
    }

    /// Whether the session is attached to the socket `conn`.
    pub fn attached_to(&self, conn: ConnId) -> bool {
        matches!(self.link, Link::Attached { conn: c, .. } if c == conn)
    }
}

/// A session that ended with an error, remembered for one grace period so that a late resume
/// learns why (e.g. `replay_overflow`) instead of a bare `resume_failed`.
#[derive(Debug)]
struct Tombstone {
    code: ErrorCode,
    secret: ResumeSecret,
    expires: Instant,
}

/// What is due at a given time (see [`Sessions::due`]).
#[derive(Debug, Default)]
pub struct Due {
    /// Parked sessions whose grace period is over, with the reason they will leave with.
    pub expired: Vec<(SessionKey, LeaveReason)>,
    /// Attached sessions whose TURN credentials must be refreshed.
    pub ice_refresh: Vec<SessionKey>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Sessions {
    live: HashMap<SessionKey, Session>,
    tombstones: HashMap<SessionKey, Tombstone>,
}

impl Sessions {
    /// A key used by no session and no tombstone.
    pub fn fresh_key(&self) -> SessionKey {
        loop {
            let key = rand::random::<u64>();
            if key != 0 && !self.live.contains_key(&key) && !self.tombstones.contains_key(&key) {
                return key;
            }
        }
    }

    /// Number of live sessions (attached or parked).
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether there is no live session.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    pub fn get(&self, key: &SessionKey) -> Option<&Session> {
        self.live.get(key)
    }

    pub fn get_mut(&mut self, key: &SessionKey) -> Option<&mut Session> {
        self.live.get_mut(key)
    }

    pub fn insert(&mut self, key: SessionKey, session: Session) {
        self.live.insert(key, session);
    }

    pub fn remove(&mut self, key: &SessionKey) -> Option<Session> {
        self.live.remove(key)
    }

    /// Every live session with its key.
    pub fn iter(&self) -> impl Iterator<Item = (&SessionKey, &Session)> {
        self.live.iter()
    }

    /// Every live session's key.
    pub fn keys(&self) -> impl Iterator<Item = &SessionKey> {
        self.live.keys()
    }

    /// Every live session.
    pub fn values(&self) -> impl Iterator<Item = &Session> {
        self.live.values()
    }

    /// Parks session `key` until `expires` if it is attached to `conn` (a session already taken
    /// over by a newer socket, or ended, is left alone). Returns whether it was parked.
    pub fn park(
        &mut self,
        key: SessionKey,
        conn: ConnId,
        expires: Instant,
        reason: LeaveReason,
    ) -> bool {
        match self.live.get_mut(&key) {
            Some(session) if session.attached_to(conn) => {
                session.link = Link::Parked { expires, reason };
                true
            }
            _ => false,
        }
    }

    /// What is due at `now`.
    pub fn due(&self, now: Instant) -> Due {
        let mut due = Due::default();
        for (key, session) in &self.live {
            match session.link {
                Link::Parked { expires, reason } if expires <= now => {
                    due.expired.push((*key, reason));
                }
                Link::Attached { .. } if session.ice_refresh_at.is_some_and(|t| t <= now) => {
                    due.ice_refresh.push(*key);
                }
                _ => {}
            }
        }
        due
    }

    /// Remembers until `expires` that session `key` (with `secret`) ended with `code`.
    pub fn bury(
        &mut self,
        key: SessionKey,
        code: ErrorCode,
        secret: ResumeSecret,
        expires: Instant,
    ) {
        self.tombstones.insert(
            key,
            Tombstone {
                code,
                secret,
                expires,
            },
        );
    }

    /// Why session `key` ended, if it did with an error and `secret` (hex) is its secret.
    pub fn tombstone(&self, key: SessionKey, secret: &str) -> Option<ErrorCode> {
        self.tombstones
            .get(&key)
            .filter(|t| t.secret.matches(secret))
            .map(|t| t.code)
    }

    /// Forgets the tombstones whose time is over at `now`.
    pub fn forget_tombstones(&mut self, now: Instant) {
        self.tombstones.retain(|_, t| t.expires > now);
    }
}
