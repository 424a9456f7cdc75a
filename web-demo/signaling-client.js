// signaling-client.js: a browser client for the signaling protocol v1 (docs/protocol.md).
//
// It owns one WebSocket session with the signaling server: the versioned join, sequence numbers
// and acks, app-level pings (browsers cannot see WebSocket pings), reconnection with exponential
// backoff and jitter, and resume with replay so that every server message is processed exactly
// once, in order, across dropped sockets. It knows nothing about RTCPeerConnection: see
// webrtc-room.js for that side.
//
//   import { SignalingClient } from './signaling-client.js';
//   const client = new SignalingClient('wss://example.org/ws', { room: 'demo', name: 'Ada' });
//   client.addEventListener('signal', (e) => console.log(e.detail.from, e.detail.signal));
//   const session = await client.connect();      // resolves with the first welcome
//   client.signal(session.peers[0].id, { kind: 'offer', sdp });
//
// Events (CustomEvent, payload in `event.detail`):
//   state         { state, previous, code?, message?, attempt?, retryInMs? }
//   welcome       { session }          a new session (first join, or a rejoin after resume failed)
//   resumed       { session, replayed } the session continued after a dropped socket
//   session-reset { reason }           the old session is gone (peer ids changed): drop all peers
//   peer-joined   { peer }             peer = { id, name?, polite }
//   peer-left     { peerId, reason }
//   signal        { from, signal }     signal = { kind: 'offer'|'answer'|'candidate'|'end_of_candidates', ... }
//   broadcast     { from, data }
//   ice-servers   { iceServers }       fresh TURN credentials (also fired after welcome/resumed)
//   draining      { reason, reconnectAfterMs }
//   error         { code, message, ref?, request? }
//
// States: idle -> connecting -> joined <-> reconnecting; failed (a refusal such as room_full,
// no more retries) and closed (close() or leave()) are final.

export const PROTOCOL_VERSIONS = Object.freeze([1]);

/** Error codes that end the attempt to join: retrying cannot help. */
const FATAL_JOIN_CODES = new Set([
  'unsupported_version', 'invalid_room_id', 'invalid_name', 'room_full', 'unauthorized', 'forbidden',
]);
/** Error codes that end the session on the server: a fresh join is needed. */
const SESSION_ENDING_CODES = new Set(['resume_failed', 'replay_overflow', 'slow_consumer']);

const DEFAULTS = Object.freeze({
  room: undefined,
  name: undefined,
  token: undefined,
  /** Reconnect delays: min(maxMs, initialMs * factor^attempt), then scaled by a random factor in [1 - jitter, 1]. */
  backoff: { initialMs: 250, maxMs: 8000, factor: 2, jitter: 0.5 },
  /** Give up after this many consecutive failed attempts (Infinity: never). */
  maxReconnectAttempts: Infinity,
  /** A socket that does not open and get an answer to join/resume within this time is dropped. */
  connectTimeoutMs: 10000,
  /** Send an ack after this many unacked frames, or after ackDelayMs, whichever comes first. */
  ackEvery: 16,
  ackDelayMs: 200,
  /** The WebSocket constructor (for tests or non-browser runtimes). */
  WebSocket: globalThis.WebSocket,
});

export class SignalingError extends Error {
  constructor(code, message, ref) {
    super(`${code}: ${message}`);
    this.name = 'SignalingError';
    this.code = code;
    this.ref = ref;
  }
}

export class SignalingClient extends EventTarget {
  /**
   * @param {string} url  the WebSocket URL of the server, e.g. `wss://host/ws`
   * @param {object} [options]  see DEFAULTS above
   */
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.options = { ...DEFAULTS, ...options, backoff: { ...DEFAULTS.backoff, ...(options.backoff || {}) } };
    /** @type {'idle'|'connecting'|'joined'|'reconnecting'|'failed'|'closed'} */
    this.state = 'idle';
    /** The current session (from the last welcome/resumed), or null. */
    this.session = null;
    /** Other peers of the room by id: { id, name?, polite }. */
    this.peers = new Map();
    this.iceServers = [];
    /** The highest seq processed. */
    this.lastSeq = 0;
    /** How many reconnects resumed the session, and how many messages were replayed in all. */
    this.stats = { resumes: 0, replayed: 0, rejoins: 0, reconnectAttempts: 0, duplicatesDropped: 0, iceServerUpdates: 0 };

    this._ws = null;
    this._nextId = 1;
    this._pending = new Map(); // request id -> the message, to explain errors
    this._outbox = []; // messages queued while not joined
    this._attempt = 0;
    this._retryTimer = null;
    this._connectTimer = null;
    this._pingTimer = null;
    this._ackTimer = null;
    this._lastAcked = 0;
    this._lastFrameAt = 0;
    this._disconnectedAt = 0;
    this._drainDelayMs = null;
    this._holdUntil = 0;
    this._firstJoin = null;
    this._onOnline = () => { if (this.state === 'reconnecting') this.reconnectNow(); };
    globalThis.addEventListener?.('online', this._onOnline);
  }

  get peerId() { return this.session?.peer_id ?? null; }

  /** Connects and joins; resolves with the session of the first welcome, rejects on a refusal. */
  connect() {
    if (this._firstJoin) return this._firstJoin.promise;
    let resolve, reject;
    const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
    this._firstJoin = { promise, resolve, reject };
    this._setState('connecting');
    this._open();
    return promise;
  }

  /** Sends a negotiation message to one peer of the room (queued while reconnecting). */
  signal(to, signal) { return this._request({ type: 'signal', to, signal }); }

  /** Sends a small JSON value to every other peer of the room. */
  broadcast(data) { return this._request({ type: 'broadcast', data }); }

  /** Leaves the room for good and closes the socket. */
  leave() {
    if (this.state === 'joined' && this._ws?.readyState === 1) this._send({ type: 'leave', id: this._nextId++ });
    this.close();
  }

  /** Closes the socket without leaving: the server keeps the session for its grace period. */
  close() {
    this._clearTimers();
    globalThis.removeEventListener?.('online', this._onOnline);
    const ws = this._ws;
    this._ws = null;
    if (ws) { this._detach(ws); try { ws.close(1000, 'client closed'); } catch { /* already closed */ } }
    this._setState('closed');
    this._firstJoin?.reject(new SignalingError('closed', 'client closed'));
  }

  /**
   * Drops the socket as a network failure would (no leave), then reconnects and resumes.
   * For tests and for "reconnect now" buttons. `holdMs` keeps the client offline that long.
   */
  dropConnection({ holdMs = 0 } = {}) {
    this._holdUntil = Date.now() + holdMs;
    const ws = this._ws;
    if (ws) { try { ws.close(4000, 'dropped by client'); } catch { /* ignore */ } this._onSocketGone(ws, 'dropped'); }
  }

  /** Skips the remaining backoff delay of a pending reconnect. */
  reconnectNow() {
    if (this.state !== 'reconnecting' && this.state !== 'connecting') return;
    if (this._ws) return;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._holdUntil = 0;
    this._open();
  }

  // --- socket lifecycle ---

  _open() {
    const WS = this.options.WebSocket;
    let ws;
    try {
      ws = new WS(this.url);
    } catch (err) {
      this._scheduleReconnect('unreachable', String(err.message || err));
      return;
    }
    this._ws = ws;
    this._opened = false;
    ws.onopen = () => {
      this._opened = true;
      this._lastFrameAt = Date.now();
      // Resume only while the server can still hold the session.
      const grace = this.session?.resume_grace_ms ?? 0;
      const canResume = this.session && (Date.now() - this._disconnectedAt) < grace;
      if (canResume) {
        ws.send(JSON.stringify({
          type: 'resume', id: this._nextId++, versions: PROTOCOL_VERSIONS,
          resume_token: this.session.resume_token, last_seq: this.lastSeq,
        }));
      } else {
        if (this.session) this._resetSession('resume grace period passed');
        this._sendJoin(ws);
      }
    };
    ws.onmessage = (ev) => this._onFrame(ws, ev.data);
    ws.onclose = (ev) => this._onSocketGone(ws, this._opened ? 'closed' : 'unreachable', ev);
    ws.onerror = () => { /* always followed by close */ };
    clearTimeout(this._connectTimer);
    this._connectTimer = setTimeout(() => {
      if (this._ws === ws && this.state !== 'joined') {
        try { ws.close(4001, 'connect timeout'); } catch { /* ignore */ }
        this._onSocketGone(ws, this._opened ? 'timeout' : 'unreachable');
      }
    }, this.options.connectTimeoutMs);
  }

  _sendJoin(ws) {
    this.lastSeq = 0;
    this._lastAcked = 0;
    const msg = { type: 'join', id: this._nextId++, versions: PROTOCOL_VERSIONS };
    if (this.options.room) msg.room = this.options.room;
    if (this.options.name) msg.name = this.options.name;
    if (this.options.token) msg.token = this.options.token;
    ws.send(JSON.stringify(msg));
  }

  _detach(ws) { ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null; }

  _onSocketGone(ws, reason, closeEvent) {
    if (ws !== this._ws) return;
    this._detach(ws);
    this._ws = null;
    clearInterval(this._pingTimer);
    this._pingTimer = null;
    clearTimeout(this._connectTimer);
    if (this.state === 'closed' || this.state === 'failed') return;
    if (this.state === 'joined') this._disconnectedAt = Date.now();
    const detail = closeEvent ? `${reason} (close code ${closeEvent.code}${closeEvent.reason ? `: ${closeEvent.reason}` : ''})` : reason;
    this._scheduleReconnect(reason, detail);
  }

  _scheduleReconnect(code, message) {
    if (this.state === 'closed' || this.state === 'failed') return;
    this._attempt += 1;
    this.stats.reconnectAttempts += 1;
    if (this._attempt > this.options.maxReconnectAttempts) {
      this._fail(code, `gave up after ${this._attempt - 1} attempts: ${message}`);
      return;
    }
    const { initialMs, maxMs, factor, jitter } = this.options.backoff;
    let delay = Math.min(maxMs, initialMs * factor ** (this._attempt - 1));
    delay *= 1 - jitter * Math.random();
    if (this._drainDelayMs != null) { delay = Math.max(delay, this._drainDelayMs); this._drainDelayMs = null; }
    delay = Math.max(delay, this._holdUntil - Date.now(), 0);
    delay = Math.round(delay);
    this._setState('reconnecting', { code, message, attempt: this._attempt, retryInMs: delay, retryAt: Date.now() + delay });
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => { this._retryTimer = null; this._open(); }, delay);
  }

  // --- incoming frames ---

  _onFrame(ws, data) {
    if (ws !== this._ws) return;
    this._lastFrameAt = Date.now();
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      this._emit('error', { code: 'invalid_frame', message: 'the server sent a frame that is not JSON' });
      return;
    }
    const seq = Number(frame.seq);
    if (Number.isFinite(seq) && seq > 0) {
      if (seq <= this.lastSeq) {
        // Already processed before the socket dropped: replay overlap. Processing it again
        // would apply an offer or candidate twice.
        this.stats.duplicatesDropped += 1;
        this._scheduleAck();
        return;
      }
      this.lastSeq = seq;
      this._scheduleAck();
    }
    this._dispatch(ws, frame);
  }

  _dispatch(ws, frame) {
    switch (frame.type) {
      case 'welcome': {
        if (this._hadSession) this.stats.rejoins += 1;
        this._hadSession = true;
        this._takeSession(frame, true);
        this._joined(ws);
        this._emit('welcome', { session: this.session });
        this._emit('ice-servers', { iceServers: this.iceServers });
        this._firstJoin?.resolve(this.session);
        break;
      }
      case 'resumed': {
        this.stats.resumes += 1;
        this.stats.replayed += Number(frame.replayed) || 0;
        this._takeSession(frame, false);
        this._joined(ws);
        this._emit('resumed', { session: this.session, replayed: frame.replayed });
        this._emit('ice-servers', { iceServers: this.iceServers });
        break;
      }
      case 'peer_joined': {
        this.peers.set(frame.peer.id, frame.peer);
        this._emit('peer-joined', { peer: frame.peer });
        break;
      }
      case 'peer_left': {
        this.peers.delete(frame.peer_id);
        this._emit('peer-left', { peerId: frame.peer_id, reason: frame.reason });
        break;
      }
      case 'signal':
        this._emit('signal', { from: frame.from, signal: frame.signal });
        break;
      case 'broadcast':
        this._emit('broadcast', { from: frame.from, data: frame.data });
        break;
      case 'ice_servers':
        this.stats.iceServerUpdates += 1;
        this.iceServers = frame.ice_servers || [];
        this._emit('ice-servers', { iceServers: this.iceServers });
        break;
      case 'pong':
        break;
      case 'draining':
        this._drainDelayMs = Number(frame.reconnect_after_ms) || 0;
        this._emit('draining', { reason: frame.reason, reconnectAfterMs: this._drainDelayMs });
        break;
      case 'error':
        this._onError(ws, frame);
        break;
      default:
        // A newer server may add message types: ignore what we do not know.
        break;
    }
  }

  _takeSession(frame, fresh) {
    const { type, seq, ref, replayed, ...session } = frame;
    void type; void seq; void ref; void replayed;
    const before = this.peers;
    this.session = session;
    this.iceServers = session.ice_servers || [];
    this.peers = new Map((session.peers || []).map((p) => [p.id, p]));
    if (!fresh) {
      // The replayed events normally leave us in agreement with the server's list; if they do
      // not (a bug or an overflowing buffer), tell the app about the difference.
      for (const [id] of before) {
        if (!this.peers.has(id)) this._emit('peer-left', { peerId: id, reason: 'disconnected' });
      }
      for (const [id, p] of this.peers) {
        if (!before.has(id)) this._emit('peer-joined', { peer: p });
      }
    }
  }

  _joined(ws) {
    this._attempt = 0;
    this._holdUntil = 0;
    clearTimeout(this._connectTimer);
    this._setState('joined');
    this._startPings(ws);
    const queued = this._outbox.splice(0);
    for (const msg of queued) this._send(msg);
  }

  _onError(ws, frame) {
    const { code, message, ref } = frame;
    const request = ref != null ? this._pending.get(ref) : undefined;
    if (ref != null) this._pending.delete(ref);
    if (this.state !== 'joined' && FATAL_JOIN_CODES.has(code)) {
      this._fail(code, message);
      return;
    }
    if (SESSION_ENDING_CODES.has(code)) {
      // The server cannot continue this session (it closes the socket): join afresh on the
      // next socket, at once.
      this._resetSession(code);
      this._attempt = 0;
      this._emit('error', { code, message, ref, request });
      return;
    }
    this._emit('error', { code, message, ref, request });
  }

  _resetSession(reason) {
    const hadPeers = [...this.peers.keys()];
    this.session = null;
    this.peers = new Map();
    this.lastSeq = 0;
    this._lastAcked = 0;
    this._outbox = this._outbox.filter((m) => m.type !== 'signal');
    this._emit('session-reset', { reason, peers: hadPeers });
  }

  _fail(code, message) {
    this._clearTimers();
    const ws = this._ws;
    this._ws = null;
    if (ws) { this._detach(ws); try { ws.close(1000, code); } catch { /* ignore */ } }
    this._setState('failed', { code, message });
    this._firstJoin?.reject(new SignalingError(code, message));
  }

  // --- outgoing ---

  _request(msg) {
    const id = this._nextId++;
    const full = { ...msg, id };
    this._pending.set(id, full);
    if (this._pending.size > 1024) this._pending.delete(this._pending.keys().next().value);
    if (this.state === 'joined' && this._ws?.readyState === 1) this._send(full);
    else if (this.state !== 'closed' && this.state !== 'failed') this._outbox.push(full);
    return id;
  }

  _send(msg) {
    try {
      this._ws.send(JSON.stringify(msg));
    } catch {
      this._outbox.push(msg);
    }
  }

  _scheduleAck() {
    if (this.lastSeq - this._lastAcked >= this.options.ackEvery) { this._sendAck(); return; }
    if (!this._ackTimer) this._ackTimer = setTimeout(() => { this._ackTimer = null; this._sendAck(); }, this.options.ackDelayMs);
  }

  _sendAck() {
    clearTimeout(this._ackTimer);
    this._ackTimer = null;
    if (this.lastSeq <= this._lastAcked || this._ws?.readyState !== 1) return;
    this._ws.send(JSON.stringify({ type: 'ack', seq: this.lastSeq }));
    this._lastAcked = this.lastSeq;
  }

  _startPings(ws) {
    clearInterval(this._pingTimer);
    const interval = Math.max(1000, Number(this.session?.ping_interval_ms) || 15000);
    const timeout = Math.max(interval, Number(this.session?.ping_timeout_ms) || 2 * interval);
    this._pingTimer = setInterval(() => {
      if (ws !== this._ws) return;
      if (Date.now() - this._lastFrameAt > timeout) {
        // The server has been silent past its own timeout: the path is dead even if the
        // socket has not noticed. Drop it and resume on a new one.
        try { ws.close(4002, 'ping timeout'); } catch { /* ignore */ }
        this._onSocketGone(ws, 'timeout');
        return;
      }
      this._sendAck();
      ws.send(JSON.stringify({ type: 'ping', id: this._nextId++ }));
    }, interval);
  }

  _clearTimers() {
    clearTimeout(this._retryTimer);
    clearTimeout(this._connectTimer);
    clearTimeout(this._ackTimer);
    clearInterval(this._pingTimer);
    this._retryTimer = this._connectTimer = this._ackTimer = this._pingTimer = null;
  }

  _setState(state, extra = {}) {
    const previous = this.state;
    this.state = state;
    this.stateInfo = { state, previous, ...extra };
    this._emit('state', this.stateInfo);
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
