-- The shared state of a cluster of signaling nodes, as Lua run atomically by Redis.
--
-- Every script gets KEYS[1] = 'sig:{ROOM}:m' (the room's member list): the hash tag puts all of
-- a room's keys in one Redis Cluster slot, so one script sees a whole room. The other keys of
-- the room are derived from it:
--   sig:{ROOM}:m        LIST   session ids, join order (earlier = the other side is polite)
--   sig:{ROOM}:p        HASH   peer id -> session id
--   sig:{ROOM}:s:SID    HASH   one session (see JOIN for the fields)
--   sig:{ROOM}:l:SID    LIST   its outbox: frames first..next-1 not acknowledged yet
--   sig:{ROOM}:t:SID    STRING tombstone 'code sechash' of a session that ended with an error
--   sig:{ROOM}:b        HASH   body id -> a broadcast body kept once for every outbox holding it
--   sig:{ROOM}:r        HASH   body id -> how many outbox entries name it
--   sig:{ROOM}:n        STRING the last body id given
-- An outbox entry is a frame, or '#SEQ:ID:BYTES' for frame SEQ whose body is ID in the room's
-- bodies (BYTES: the length of the frame it stands for, which the outbox bounds count); the
-- session's field 'sh' counts such entries.
-- Every key has a TTL (ARGV[1] ms), refreshed while a node serves the room.
-- ARGV[1] = key ttl ms, ARGV[2] = outbox max frames, ARGV[3] = outbox max bytes; the script's
-- own arguments start at ARGV[4].
local P = string.sub(KEYS[1], 1, -2)
local TTL = tonumber(ARGV[1])
local MAXN = tonumber(ARGV[2])
local MAXB = tonumber(ARGV[3])
local M = P .. 'm'
local PEERS = P .. 'p'
local BODIES = P .. 'b'
local REFS = P .. 'r'
local BODY_IDS = P .. 'n'
local function skey(sid) return P .. 's:' .. sid end
local function lkey(sid) return P .. 'l:' .. sid end
local function touch(k) redis.call('PEXPIRE', k, TTL) end
-- Refreshes the TTL of every key of the room.
local function touch_room()
  touch(M) touch(PEERS) touch(BODIES) touch(REFS) touch(BODY_IDS)
  for _, sid in ipairs(redis.call('LRANGE', M, 0, -1)) do touch(skey(sid)) touch(lkey(sid)) end
end
-- On a Redis Cluster, a slot that is moving to another master (resharding) has some of the
-- room's keys here and the others there, and a script fails at the first command that touches
-- one that is not here, keeping the writes it made before. Run first (on a Redis Cluster only),
-- this fails the script before it writes while the room's slot moves: during a move, a
-- command that names a key missing from its master fails, on the master the slot leaves (ASK)
-- as on the one it goes to (TRYAGAIN), and the room's `guard` key is never written.
local function guard_room()
  redis.call('EXISTS', M, P .. 'guard')
end
-- Why session `sid` is not in Redis: 'ended' (it left a tombstone: its end, with its error, is
-- on its way to its node) or 'gone' (its keys expired, or it ended without a code).
local function missing(sid)
  if redis.call('EXISTS', P .. 't:' .. sid) == 1 then return 'ended' end
  return 'gone'
end
-- Sessions whose outbox overflowed while parked: the caller ends them (replay_overflow).
local over = {}
-- The placeholders of templates that a script fills in: `replayed` and `received` (u64::MAX
-- and u64::MAX - 1, numbers no real count reaches), each with its key: a name or room that
-- spells the number is a JSON string, where a quote is escaped, so it cannot match.
local REPLAYED = '"replayed":18446744073709551615'
local RECEIVED = '"received":18446744073709551614'

-- Broadcast bodies at least this long are kept once per room (`share_body`), not copied into
-- every member's outbox.
local SHARED_BODY_MIN = 1024

-- Keeps `body` once for the room; returns its id, named by each outbox entry that holds it.
-- The caller holds one reference of its own until it is done appending (`release`): an entry
-- dropped at once (an outbox bound below the frame's size) cannot take the body meanwhile.
local function share_body(body)
  local id = tostring(redis.call('INCR', BODY_IDS))
  redis.call('HSET', BODIES, id, body)
  redis.call('HSET', REFS, id, 1)
  touch(BODY_IDS) touch(BODIES) touch(REFS)
  return id
end

-- One reference to shared body `id` is gone; the last takes the body with it.
local function release(id)
  if redis.call('HINCRBY', REFS, id, -1) <= 0 then
    redis.call('HDEL', REFS, id)
    redis.call('HDEL', BODIES, id)
  end
end

-- Outbox entry `old` leaves the outbox of the session whose hash is `s`: the length of the
-- frame it stands for. The session counts the shared bodies its outbox names ('sh'), so that
-- its end reads the outbox only when there are some to release.
local function drop_entry(s, old)
  if string.byte(old, 1) ~= 35 then return #old end
  local id, bytes = string.match(old, '^#%d+:(%d+):(%d+)$')
  release(id)
  redis.call('HINCRBY', s, 'sh', -1)
  return tonumber(bytes)
end

-- The frame outbox entry `entry` stands for; nil when its shared body is gone.
local function frame_of(entry)
  if string.byte(entry, 1) ~= 35 then return entry end
  local seq, id = string.match(entry, '^#(%d+):(%d+):')
  local body = redis.call('HGET', BODIES, id)
  if not body then return nil end
  return '{"seq":' .. seq .. ',' .. string.sub(body, 2)
end

-- Numbers `body` (a JSON object without seq) for session `sid` and appends it to the outbox:
-- the frame itself, or a reference to the shared body `shared` (an id from `share_body`).
-- Returns the seq and the frame (nil for a shared body), and the node to publish it to when
-- the session is attached (nil when it is parked); nil when the session is gone.
local function append(sid, body, shared)
  local s = skey(sid)
  local st = redis.call('HMGET', s, 'next', 'first', 'bytes', 'state', 'node')
  if not st[1] then return nil end
  local seq = tonumber(st[1])
  local frame, entry, size
  if shared then
    size = #body + #tostring(seq) + 7
    entry = '#' .. seq .. ':' .. shared .. ':' .. size
    redis.call('HINCRBY', REFS, shared, 1)
    redis.call('HINCRBY', s, 'sh', 1)
  else
    frame = '{"seq":' .. seq .. ',' .. string.sub(body, 2)
    entry, size = frame, #frame
  end
  local l = lkey(sid)
  if redis.call('RPUSH', l, entry) == 1 then touch(l) end
  local first = tonumber(st[2])
  local bytes = tonumber(st[3]) + size
  local n = seq - first + 1
  local node = nil
  if st[4] == 'a' then
    -- Attached: the socket gets it now; keep a bounded tail for a resume.
    while n > MAXN or bytes > MAXB do
      local old = redis.call('LPOP', l)
      if not old then
        -- Nothing left: the count had drifted from the list (never so, but a script error here
        -- would fail every later broadcast to the room).
        bytes, first, n = 0, seq + 1, 0
        break
      end
      bytes = bytes - drop_entry(s, old)
      first = first + 1
      n = n - 1
    end
    node = st[5]
  elseif n > MAXN or bytes > MAXB then
    over[#over + 1] = sid
  end
  redis.call('HSET', s, 'next', seq + 1, 'first', first, 'bytes', bytes)
  return seq, frame, node
end

-- Numbers `body` for session `sid`, appends it to the outbox and, when the session is
-- attached, publishes it to its node ('SID' .. frame). Returns the seq, or nil.
local function emit(sid, body)
  local seq, frame, node = append(sid, body)
  if node then redis.call('PUBLISH', 'sig:ch:' .. node, sid .. frame) end
  return seq
end

-- `emit` of one `body` to each member of the room but `except` (a session id, or nil),
-- published once per node rather than once per session: '!bc SID:SEQ,SID:SEQ,... ' .. body
-- (each node numbers the frames itself, as `append` does). A broadcast crosses pub/sub as
-- many times as there are nodes, whatever the room's size. Returns how many sessions got it.
local function emit_all(body, except)
  local by_node, nodes, n = {}, {}, 0
  local shared = nil
  if #body >= SHARED_BODY_MIN then shared = share_body(body) end
  for _, sid in ipairs(redis.call('LRANGE', M, 0, -1)) do
    if sid ~= except then
      local seq, _, node = append(sid, body, shared)
      if seq then n = n + 1 end
      if node then
        if not by_node[node] then
          by_node[node] = {}
          nodes[#nodes + 1] = node
        end
        local list = by_node[node]
        list[#list + 1] = sid .. ':' .. seq
      end
    end
  end
  for _, node in ipairs(nodes) do
    redis.call('PUBLISH', 'sig:ch:' .. node, '!bc ' .. table.concat(by_node[node], ',') .. ' ' .. body)
  end
  if shared then release(shared) end
  return n
end

-- The highest client frame number (`cseq`) session `sid` handled, as a string ('0': none).
local function received(sid)
  return redis.call('HGET', skey(sid), 'rcv') or '0'
end

-- Whether client frame number `cseq` (a string; '' for an unnumbered frame) is new for
-- session `sid`, recording it as handled. A frame at or below the highest handled is a
-- duplicate: its client sent it again after a dropped link.
local function first_sight(sid, cseq)
  if cseq == '' then return true end
  local n = tonumber(cseq)
  if n <= tonumber(received(sid)) then return false end
  redis.call('HSET', skey(sid), 'rcv', cseq)
  return true
end

-- Drops outbox frames up to and including `seq`, and records `seq` as acknowledged ('ack':
-- a resume from below it contradicts the client, one from below 'first' finds frames dropped).
local function ack(sid, seq)
  local s = skey(sid)
  local st = redis.call('HMGET', s, 'first', 'bytes', 'next', 'ack')
  if not st[1] then return end
  local first = tonumber(st[1])
  local bytes = tonumber(st[2])
  local last = math.min(seq, tonumber(st[3]) - 1)
  local l = lkey(sid)
  while first <= last do
    local old = redis.call('LPOP', l)
    if not old then break end
    bytes = bytes - drop_entry(s, old)
    first = first + 1
  end
  redis.call('HSET', s, 'first', first, 'bytes', bytes, 'ack', math.max(last, tonumber(st[4] or '0')))
end

-- The other members with, for each, the PeerInfo JSON as `sid` sees it (polite towards those
-- that joined earlier).
local function peers_of(sid)
  local out = {}
  local earlier = true
  for _, other in ipairs(redis.call('LRANGE', M, 0, -1)) do
    if other == sid then
      earlier = false
    else
      local info = redis.call('HGET', skey(other), earlier and 'pt' or 'pf')
      if info then out[#out + 1] = info end
    end
  end
  return table.concat(out, ',')
end

local function plain_replace(s, pattern, with)
  local i, j = string.find(s, pattern, 1, true)
  if not i then return s end
  return string.sub(s, 1, i - 1) .. with .. string.sub(s, j + 1)
end

-- Removes session `sid` and tells the rest of the room (`left` is the peer_left template with
-- the peer id "%PEER%"; '' tells nobody). `code` ~= '' leaves a tombstone for one grace period (`grace` ms).
local function end_session(sid, left, code, grace)
  local s = skey(sid)
  local st = redis.call('HMGET', s, 'peer', 'sec', 'node', 'conn', 'next', 'state', 'exp', 'sh')
  if not st[1] then return nil end
  if st[6] == 'p' then
    -- Parked at its node, which counts it until told (else until its deadline).
    redis.call('PUBLISH', 'sig:ch:' .. st[3], '!moved ' .. sid .. ' ' .. (st[7] or ''))
  end
  redis.call('LREM', M, 0, sid)
  redis.call('HDEL', PEERS, st[1])
  if tonumber(st[8] or '0') > 0 then
    for _, old in ipairs(redis.call('LRANGE', lkey(sid), 0, -1)) do drop_entry(s, old) end
  end
  redis.call('DEL', s, lkey(sid))
  if code ~= '' then
    redis.call('SET', P .. 't:' .. sid, code .. ' ' .. st[2], 'PX', grace)
  end
  if left ~= '' then
    emit_all(plain_replace(left, '"%PEER%"', '"' .. st[1] .. '"'), nil)
  end
  return st
end

-- Whether `peer` is a member of the room other than session `sid`.
local function other_peer(sid, peer)
  local target = redis.call('HGET', PEERS, peer)
  return target and target ~= sid
end

-- A `stats` report of `sid` about no other peer of the room: `answer` (unless '') goes to the
-- session; the reply is the script's 'unknown_peer'.
local function refuse_stats(sid, answer)
  if answer ~= '' then emit(sid, answer) end
  return {'unknown_peer', table.concat(over, ' ')}
end
