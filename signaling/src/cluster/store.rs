//! The shared store of a cluster: Redis (standalone or Redis Cluster), reached only through the
//! atomic Lua scripts of `scripts.lua` and a few plain commands for node leases.
//!
//! The connection (standalone or Redis Cluster) is `fleet::link`, shared with the relays.
//!
//! Every call has a deadline ([`Store::timeout`]): a Redis that does not answer is an outage,
//! never a task that waits forever.

use std::collections::HashSet;
use std::time::Duration;

use redis::{Cmd, Script};

use crate::protocol::RoomId;

pub use fleet::link::{Connection, StoreError, connect};

/// The scripts, each the shared prelude plus its own body.
struct Scripts {
    join: Script,
    resume: Script,
    signal: Script,
    broadcast: Script,
    emit: Script,
    pong: Script,
    ack: Script,
    park: Script,
    adopt: Script,
    end: Script,
    touch: Script,
    ice_due: Script,
    room: Script,
    check: Script,
    report: Script,
    forward_stats: Script,
    admin_end: Script,
}

const PRELUDE: &str = include_str!("scripts.lua");

/// What a `resumed` template says for `replayed` until the script fills in the count (the
/// script's `REPLAYED`: no real count reaches it).
pub const REPLAYED_PLACEHOLDER: u64 = u64::MAX;
/// What a `resumed` or `pong` template says for `received` until the script fills in the
/// session's highest handled `cseq` (the script's `RECEIVED`).
pub const RECEIVED_PLACEHOLDER: u64 = u64::MAX - 1;

impl Scripts {
    /// The scripts; on a Redis Cluster (`cluster`), each first checks that its room's slot is
    /// not moving (`guard_room` in `scripts.lua`): one that would find the slot half moved
    /// fails before it writes, instead of after a part of its writes.
    fn new(cluster: bool) -> Self {
        let guard = if cluster { "guard_room()\n" } else { "" };
        let script = |body: &str| Script::new(&format!("{PRELUDE}\n{guard}{body}"));
        Self {
            // ARGV: sid peer sechash node conn version max_peers pt pf welcome joined name at-ms
            // transport ice-due (unix ms when the welcome's TURN credentials are refreshed; '')
            join: script(
                r#"
local sid = ARGV[4]
if redis.call('LLEN', M) >= tonumber(ARGV[10]) then return {'room_full', ''} end
if redis.call('HEXISTS', PEERS, ARGV[5]) == 1 then return {'peer_taken', ''} end
local s = skey(sid)
redis.call('HSET', s, 'peer', ARGV[5], 'sec', ARGV[6], 'node', ARGV[7], 'conn', ARGV[8],
  'ver', ARGV[9], 'pt', ARGV[11], 'pf', ARGV[12], 'name', ARGV[15], 'state', 'a',
  'next', 1, 'first', 1, 'bytes', 0, 'at', ARGV[16], 'tr', ARGV[17])
if ARGV[18] ~= '' then redis.call('HSET', s, 'ice', ARGV[18]) end
redis.call('RPUSH', M, sid)
redis.call('HSET', PEERS, ARGV[5], sid)
touch_room()
emit(sid, plain_replace(ARGV[13], '"peers":[]', '"peers":[' .. peers_of(sid) .. ']'))
emit_all(ARGV[14], sid)
return {'ok', table.concat(over, ' ')}
"#,
            ),
            // ARGV: sid sechash last_seq ('ack': after what the session acknowledged) node conn
            // version resumed-template peer at-ms ice-due ('' for a quiet re-attach: the due
            // refresh stays). Returns the old node, conn and state, the ice due, the last_seq
            // taken up from, then the frames to replay; 'gap' (the session stays) or 'dropped'
            // (the session is in the overflowed list, with the last_seq) when it cannot be
            // resumed.
            resume: script(
                r#"
local sid = ARGV[4]
local tomb = redis.call('GET', P .. 't:' .. sid)
if tomb then
  local code, sec = string.match(tomb, '^(%S+) (%S+)$')
  if sec == ARGV[5] then return {'ended', '', code} end
end
local s = skey(sid)
local st = redis.call('HMGET', s, 'sec', 'first', 'next', 'node', 'conn', 'state', 'peer', 'ice',
  'ack', 'exp', 'links', 'lat')
if not st[1] or st[1] ~= ARGV[5] or st[7] ~= ARGV[11] then return {'unknown', ''} end
local last = tonumber(ARGV[6]) or tonumber(st[9] or '0')
local first, nxt = tonumber(st[2]), tonumber(st[3])
if last >= nxt or last < tonumber(st[9] or '0') then return {'gap', '', tostring(nxt)} end
-- Frames the client never acknowledged are gone: the caller ends the session, and the node of
-- a socket still attached lets go of it.
local function dropped()
  if st[6] == 'a' then
    redis.call('PUBLISH', 'sig:ch:' .. st[4], '!close ' .. sid .. ' ' .. st[5])
  end
  over[#over + 1] = sid
  return {'dropped', table.concat(over, ' '), tostring(last)}
end
-- Dropped while it counted as attached (a socket thought alive, or a node that died before its
-- lease ran out).
if last + 1 < first then return dropped() end
ack(sid, last)
local replay = redis.call('LRANGE', lkey(sid), 0, -1)
for i, entry in ipairs(replay) do
  replay[i] = frame_of(entry)
  -- Its shared body is gone (the room's keys expired apart).
  if not replay[i] then return dropped() end
end
redis.call('HSET', s, 'node', ARGV[7], 'conn', ARGV[8], 'ver', ARGV[9], 'state', 'a',
  'at', ARGV[12])
local ice = st[8] or ''
if ARGV[13] ~= '' then
  redis.call('HSET', s, 'ice', ARGV[13])
  ice = ARGV[13]
end
if st[4] ~= ARGV[7] then
  if st[6] == 'a' then
    -- The old node may still think its socket alive: tell it to let go.
    redis.call('PUBLISH', 'sig:ch:' .. st[4], '!close ' .. sid .. ' ' .. st[5])
  else
    -- Parked there: that node stops counting (and expiring) it; the deadline names which
    -- parking (the session may be parked there again by the time this arrives).
    redis.call('PUBLISH', 'sig:ch:' .. st[4], '!moved ' .. sid .. ' ' .. (st[10] or ''))
  end
elseif st[6] == 'a' and st[5] ~= ARGV[8] then
  -- Attached on this node by another connection: it lets go before the `resumed` below comes,
  -- in the channel's order, so that it gets nothing of the new one's.
  redis.call('PUBLISH', 'sig:ch:' .. st[4], '!close ' .. sid .. ' ' .. st[5])
end
if ARGV[10] ~= '' then
  local body = plain_replace(ARGV[10], '"peers":[]', '"peers":[' .. peers_of(sid) .. ']')
  body = plain_replace(body, REPLAYED, '"replayed":' .. tostring(#replay))
  body = plain_replace(body, RECEIVED, '"received":' .. received(sid))
  emit(sid, body)
end
-- The room lives on: its keys' TTL may be nearly spent (after a Redis outage no node could
-- renew it, and this node renews its rooms only every quarter TTL).
touch_room()
local out = {'ok', table.concat(over, ' '), st[4], st[5], st[6], ice, st[11] or '', st[12] or '',
  tostring(last)}
for _, f in ipairs(replay) do out[#out + 1] = f end
return out
"#,
            ),
            // ARGV: from-sid to-peer body cseq ('' when unnumbered) error. 'unknown_peer':
            // nothing was sent, and `error` went to the sender in the same step (a node lost
            // after the check cannot drop the answer); 'dup': the session handled `cseq`
            // already, nothing was sent; 'gone': the sender's session is not in Redis and left
            // no tombstone (its keys expired), 'ended': it ended (its end is on its way to its
            // node); nothing was sent. Broadcast, emit, pong and ack answer these alike.
            signal: script(
                r#"
if redis.call('EXISTS', skey(ARGV[4])) == 0 then return {missing(ARGV[4]), ''} end
if not first_sight(ARGV[4], ARGV[7]) then return {'dup', ''} end
local target = redis.call('HGET', PEERS, ARGV[5])
if target and target ~= ARGV[4] then
  emit(target, ARGV[6])
  return {'ok', table.concat(over, ' ')}
end
emit(ARGV[4], ARGV[8])
return {'unknown_peer', table.concat(over, ' ')}
"#,
            ),
            // ARGV: from-sid ('' for the backend) body cseq ('' when unnumbered)
            broadcast: script(
                r#"
if ARGV[4] ~= '' and redis.call('EXISTS', skey(ARGV[4])) == 0 then
  return {missing(ARGV[4]), '', '0'}
end
if ARGV[4] ~= '' and not first_sight(ARGV[4], ARGV[6]) then return {'dup', '', '0'} end
local n = emit_all(ARGV[5], ARGV[4])
return {'ok', table.concat(over, ' '), tostring(n)}
"#,
            ),
            // ARGV: sid body [ice-due: the body carries fresh TURN credentials, due then]
            emit: script(
                r#"
local seq = emit(ARGV[4], ARGV[5])
if seq and ARGV[6] then redis.call('HSET', skey(ARGV[4]), 'ice', ARGV[6]) end
return {seq and 'ok' or missing(ARGV[4]), table.concat(over, ' '), tostring(seq or 0)}
"#,
            ),
            // ARGV: sid pong-template (its `received` placeholder filled in here)
            pong: script(
                r#"
local body = plain_replace(ARGV[5], RECEIVED, '"received":' .. received(ARGV[4]))
local seq = emit(ARGV[4], body)
return {seq and 'ok' or missing(ARGV[4]), table.concat(over, ' '), tostring(seq or 0)}
"#,
            ),
            // ARGV: sid seq
            ack: script(
                r#"
if redis.call('EXISTS', skey(ARGV[4])) == 0 then return {missing(ARGV[4]), ''} end
ack(ARGV[4], tonumber(ARGV[5]))
return {'ok', ''}
"#,
            ),
            // ARGV: sid node conn expires-ms reason move. Parked by an earlier park of this
            // connection already (Redis ran it late, after a hang): with move '1', the deadline
            // moves to the later one. Returns the deadline in force.
            park: script(
                r#"
local s = skey(ARGV[4])
local st = redis.call('HMGET', s, 'node', 'conn', 'state', 'exp')
if st[1] ~= ARGV[5] or st[2] ~= ARGV[6] then return {'no', ''} end
if st[3] == 'a' then
  redis.call('HSET', s, 'state', 'p', 'exp', ARGV[7], 'reason', ARGV[8])
  touch_room()
  return {'ok', '', ARGV[7]}
end
if st[3] ~= 'p' then return {'no', ''} end
local exp = st[4] or '0'
if ARGV[9] == '1' and tonumber(ARGV[7]) > tonumber(exp) then
  redis.call('HSET', s, 'exp', ARGV[7])
  exp = ARGV[7]
end
touch_room()
return {'ok', '', exp}
"#,
            ),
            // ARGV: sid dead-node me expires-ms now-ms. Returns the parked session's expiry: a
            // y-webrtc subscription, which no client resumes (lib0 subscribes afresh), is due
            // now, so it gives its place in the topic back at the adopter's next sweep.
            adopt: script(
                r#"
local s = skey(ARGV[4])
local st = redis.call('HMGET', s, 'node', 'state', 'exp', 'tr')
if st[1] ~= ARGV[5] then return {'no', ''} end
if st[2] == 'a' then
  local exp = ARGV[7]
  if st[4] == 'y-webrtc' then exp = ARGV[8] end
  redis.call('HSET', s, 'state', 'p', 'exp', exp, 'reason', 'disconnected', 'node', ARGV[6])
  return {'ok', '', exp}
end
redis.call('HSET', s, 'node', ARGV[6])
return {'ok', '', st[3]}
"#,
            ),
            // ARGV: sid left-template code grace-ms guard node conn now-ms
            // guard: 'any' | 'conn' (attached to node/conn) | 'expired' (parked at node, due)
            //   | 'token' (any, and an attached stream is told to close with 1000)
            end: script(
                r#"
local sid = ARGV[4]
local st = redis.call('HMGET', skey(sid), 'node', 'conn', 'state', 'exp')
if not st[1] then return {'no', ''} end
local guard = ARGV[8]
if guard == 'conn' and (st[1] ~= ARGV[9] or st[2] ~= ARGV[10] or st[3] ~= 'a') then
  return {'no', ''}
end
if guard == 'expired' and (st[1] ~= ARGV[9] or st[3] ~= 'p' or tonumber(st[4]) > tonumber(ARGV[11])) then
  return {'no', ''}
end
local gone = end_session(sid, ARGV[5], ARGV[6], tonumber(ARGV[7]))
if guard == 'token' and gone[6] == 'a' then
  -- Left by HTTP while a stream is attached somewhere: close that stream normally.
  redis.call('PUBLISH', 'sig:ch:' .. gone[3], '!close ' .. sid .. ' ' .. gone[4] .. ' 1000')
end
if redis.call('LLEN', M) == 0 then redis.call('DEL', M, PEERS, BODIES, REFS, BODY_IDS) end
return {'ok', table.concat(over, ' '), gone[3], gone[4], gone[5]}
"#,
            ),
            // ARGV: the sessions attached to the calling node. Refreshes the TTL of every key
            // of the room; returns those of the sessions that are 'gone' (see `signal`): the
            // node closes their sockets.
            touch: script(
                r#"
touch_room()
local out = {'ok', ''}
for i = 4, #ARGV do
  local sid = ARGV[i]
  if redis.call('EXISTS', skey(sid)) == 0 and missing(sid) == 'gone' then out[#out + 1] = sid end
end
return out
"#,
            ),
            // ARGV: sid ice-due. Sets when session `sid`'s TURN credentials are due for a
            // refresh ('0': at once, after its relay changed while it was parked).
            ice_due: script(
                r#"
local s = skey(ARGV[4])
if redis.call('EXISTS', s) == 1 then redis.call('HSET', s, 'ice', ARGV[5]) end
return {'ok', ''}
"#,
            ),
            // ARGV: sid sechash peer. Whether a presented token names a live session.
            check: script(
                r#"
local sid = ARGV[4]
local st = redis.call('HMGET', skey(sid), 'sec', 'peer')
if st[1] then
  if st[1] == ARGV[5] and st[2] == ARGV[6] then return {'ok', ''} end
  return {'unknown', ''}
end
local tomb = redis.call('GET', P .. 't:' .. sid)
if tomb then
  local code, sec = string.match(tomb, '^(%S+) (%S+)$')
  if sec == ARGV[5] then return {'ended', '', code} end
end
return {'unknown', ''}
"#,
            ),
            // The room's members, oldest first, ROOM_FIELDS strings each: peer name node state
            // attached-at-ms links-json reported-at-ms transport ('' when unknown).
            room: script(
                r#"
local out = {'ok', ''}
for _, sid in ipairs(redis.call('LRANGE', M, 0, -1)) do
  local st = redis.call('HMGET', skey(sid), 'peer', 'name', 'node', 'state', 'at', 'links', 'lat',
    'tr')
  if st[1] then
    for i = 1, 8 do out[#out + 1] = st[i] or '' end
  end
end
return out
"#,
            ),
            // ARGV: sid links-json now-ms peer answer. Keeps the session's latest `stats` links
            // for the admin views of every node, when the report's `peer` is another peer of
            // the room; else 'unknown_peer': nothing kept, and `answer` (unless '') went to
            // the session in the same step.
            report: script(
                r#"
local s = skey(ARGV[4])
if redis.call('EXISTS', s) == 0 then return {missing(ARGV[4]), ''} end
if not other_peer(ARGV[4], ARGV[7]) then return refuse_stats(ARGV[4], ARGV[8]) end
redis.call('HSET', s, 'links', ARGV[5], 'lat', ARGV[6])
return {'ok', ''}
"#,
            ),
            // ARGV: sid report-json this-node peer answer. A `stats` report that reached a node
            // other than the one holding the session's socket or stream goes to that node
            // (`!stats SID JSON`); a parked session's is dropped ('parked'), one about a
            // `peer` that is not another peer of the room too, `answer` going to the session
            // in the same step ('unknown_peer').
            forward_stats: script(
                r#"
local st = redis.call('HMGET', skey(ARGV[4]), 'node', 'state')
if st[2] ~= 'a' or st[1] == ARGV[6] then return {'parked', ''} end
if not other_peer(ARGV[4], ARGV[7]) then return refuse_stats(ARGV[4], ARGV[8]) end
redis.call('PUBLISH', 'sig:ch:' .. st[1], '!stats ' .. ARGV[4] .. ' ' .. ARGV[5])
return {'ok', ''}
"#,
            ),
            // ARGV: peer ('' = every member) error-body left-template code grace-ms close-code.
            // Ends sessions by an operator's order: each gets the error frame, is removed with a
            // tombstone (its resume is refused with `code`), and its socket, attached on any
            // node, is closed with close-code after the frame. Returns the ended sessions as
            // pairs: sid node.
            admin_end: script(
                r#"
local targets
if ARGV[4] == '' then
  targets = redis.call('LRANGE', M, 0, -1)
else
  local sid = redis.call('HGET', PEERS, ARGV[4])
  targets = sid and {sid} or {}
end
-- A whole room ends: nobody stays to be told `peer_left`.
local left = ARGV[4] == '' and '' or ARGV[6]
local ended = {}
for _, sid in ipairs(targets) do
  emit(sid, ARGV[5])
  local gone = end_session(sid, left, ARGV[7], tonumber(ARGV[8]))
  if gone then
    if gone[6] == 'a' then
      redis.call('PUBLISH', 'sig:ch:' .. gone[3], '!close ' .. sid .. ' ' .. gone[4] .. ' ' .. ARGV[9])
    end
    ended[#ended + 1] = sid
    ended[#ended + 1] = gone[3]
  end
end
if redis.call('LLEN', M) == 0 then redis.call('DEL', M, PEERS, BODIES, REFS, BODY_IDS) end
local out = {'ok', table.concat(over, ' ')}
for _, v in ipairs(ended) do out[#out + 1] = v end
return out
"#,
            ),
        }
    }
}

/// The reply of a script: a status word, the sessions whose parked outbox overflowed, and the
/// script's own values.
#[derive(Debug)]
pub struct Reply {
    pub status: String,
    pub overflowed: Vec<String>,
    pub rest: Vec<String>,
}

impl Reply {
    fn parse(value: Vec<Option<String>>) -> Result<Self, StoreError> {
        let mut items = value.into_iter();
        let status = items
            .next()
            .flatten()
            .ok_or_else(|| StoreError::Reply("empty reply".into()))?;
        let overflowed = items
            .next()
            .flatten()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let rest = items.map(Option::unwrap_or_default).collect();
        Ok(Self {
            status,
            overflowed,
            rest,
        })
    }
}

/// Bounds of an outbox, and how long a room's keys live without a refresh.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    pub key_ttl: Duration,
    pub max_frames: usize,
    pub max_bytes: usize,
}

/// Typed calls into the shared state.
pub struct Store {
    conn: Connection,
    /// Broadcasts go through a connection of their own: a burst of big ones (a 64 KB body
    /// appended to every member's outbox) would otherwise queue every other room's calls
    /// behind it on the one connection. Each session's calls are awaited one after the other,
    /// so a sender's order holds across the two.
    broadcasts: Connection,
    scripts: Scripts,
    limits: StoreLimits,
    timeout: Duration,
}

/// The script a call runs (names the script and keeps the call sites short).
#[derive(Debug, Clone, Copy)]
pub enum Op {
    Join,
    Resume,
    Signal,
    Broadcast,
    Emit,
    Pong,
    Ack,
    Park,
    Adopt,
    End,
    Touch,
    IceDue,
    Room,
    Check,
    Report,
    ForwardStats,
    AdminEnd,
}

/// How many strings the room script returns per member.
pub const ROOM_FIELDS: usize = 8;

/// How many members one `SSCAN` of [`Store::set_members`] asks for (Redis may return a few
/// more or fewer).
const SET_SCAN_COUNT: usize = 1000;

/// The routing key of a room: its member list. The `{room}` hash tag keeps every key of the
/// room in one slot of a Redis Cluster.
pub fn room_key(room: &RoomId) -> String {
    format!("sig:{{{room}}}:m")
}

impl Store {
    /// Wraps the connections: `conn` for every call but broadcasts, which go through
    /// `broadcasts`.
    pub fn new(
        conn: Connection,
        broadcasts: Connection,
        limits: StoreLimits,
        timeout: Duration,
    ) -> Self {
        let scripts = Scripts::new(matches!(conn, Connection::Cluster(_)));
        Self {
            conn,
            broadcasts,
            scripts,
            limits,
            timeout,
        }
    }

    /// The deadline of every call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs script `op` on `room` with `args` (after the common ttl and bounds).
    pub async fn call(&self, op: Op, room: &RoomId, args: &[&str]) -> Result<Reply, StoreError> {
        let scripts = &self.scripts;
        let script = match op {
            Op::Join => &scripts.join,
            Op::Resume => &scripts.resume,
            Op::Signal => &scripts.signal,
            Op::Broadcast => &scripts.broadcast,
            Op::Emit => &scripts.emit,
            Op::Pong => &scripts.pong,
            Op::Ack => &scripts.ack,
            Op::Park => &scripts.park,
            Op::Adopt => &scripts.adopt,
            Op::End => &scripts.end,
            Op::Touch => &scripts.touch,
            Op::IceDue => &scripts.ice_due,
            Op::Check => &scripts.check,
            Op::Room => &scripts.room,
            Op::Report => &scripts.report,
            Op::ForwardStats => &scripts.forward_stats,
            Op::AdminEnd => &scripts.admin_end,
        };
        let mut invocation = script.key(room_key(room));
        invocation
            .arg(self.limits.key_ttl.as_millis() as u64)
            .arg(self.limits.max_frames)
            .arg(self.limits.max_bytes);
        for arg in args {
            invocation.arg(*arg);
        }
        let conn = match op {
            Op::Broadcast => &self.broadcasts,
            _ => &self.conn,
        };
        let value: Vec<Option<String>> = conn.invoke(&invocation, self.timeout).await?;
        Reply::parse(value)
    }

    /// Runs a plain command (node leases and indexes).
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        self.conn.query(cmd, self.timeout).await
    }

    /// Checks the broadcasts connection (`PING`), for the heartbeat: idle between bursts, it
    /// would otherwise find out that Redis restarted only when a client's broadcast failed on
    /// its dead socket (which reconnects it, too late for that broadcast).
    pub async fn check_broadcasts(&self) -> Result<(), StoreError> {
        let _: String = self
            .broadcasts
            .query(&redis::cmd("PING"), self.timeout)
            .await?;
        Ok(())
    }

    /// The members of the set `key`, read `SET_SCAN_COUNT` at a time with `SSCAN` so that a
    /// node's index of tens of thousands of sessions never holds Redis up in one reply (as
    /// `SMEMBERS` would, for every node, at each reconciliation). A member that is in the set
    /// from the first call to the last is in the result; one added or removed meanwhile may or
    /// may not be (no caller needs more: see `ClusterHub::reconcile_index`). Each call has
    /// `--redis-timeout`.
    pub async fn set_members(&self, key: &str) -> Result<HashSet<String>, StoreError> {
        let mut members = HashSet::new();
        let mut cursor = 0u64;
        loop {
            let cmd = redis::cmd("SSCAN")
                .arg(key)
                .arg(cursor)
                .arg("COUNT")
                .arg(SET_SCAN_COUNT)
                .to_owned();
            let (next, batch): (u64, Vec<String>) = self.query(&cmd).await?;
            members.extend(batch);
            if next == 0 {
                return Ok(members);
            }
            cursor = next;
        }
    }

    /// Removes `member` from the sorted set `key` if its score is at most `max`, in one step.
    /// Whether it was removed (only one caller of many wins).
    pub async fn remove_if_score_at_most(
        &self,
        key: &str,
        member: &str,
        max: u64,
    ) -> Result<bool, StoreError> {
        static REMOVE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
            Script::new(
                "local score = redis.call('ZSCORE', KEYS[1], ARGV[1]) \
                 if score and tonumber(score) <= tonumber(ARGV[2]) then \
                 return redis.call('ZREM', KEYS[1], ARGV[1]) end return 0",
            )
        });
        let mut invocation = REMOVE.key(key);
        invocation.arg(member).arg(max);
        let removed: i64 = self.conn.invoke(&invocation, self.timeout).await?;
        Ok(removed == 1)
    }

    /// Adds `member` to the set `key` and gives the set `ttl`, in one step (every key has a
    /// TTL from its first write). Whether `member` is new.
    pub async fn add_to_set(
        &self,
        key: &str,
        member: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        static ADD: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
            Script::new(
                "local added = redis.call('SADD', KEYS[1], ARGV[1]) \
                 redis.call('PEXPIRE', KEYS[1], ARGV[2]) return added",
            )
        });
        let mut invocation = ADD.key(key);
        invocation.arg(member).arg(ttl.as_millis() as u64);
        let added: i64 = self.conn.invoke(&invocation, self.timeout).await?;
        Ok(added == 1)
    }

    /// Keeps the agreed TURN secret alive (and writes back `agreed` if Redis lost it): see
    /// [`fleet::secret::keep_turn_secret`].
    pub async fn keep_turn_secret(&self, agreed: Option<&str>) -> Result<(), StoreError> {
        fleet::secret::keep_turn_secret(&self.conn, agreed, self.timeout).await?;
        Ok(())
    }
}
