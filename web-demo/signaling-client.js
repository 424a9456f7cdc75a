// signaling-client.js: a browser client for the signaling protocol v1 (docs/protocol.md).
//
// It owns one session with the signaling server: the versioned join, sequence numbers and acks,
// app-level pings (browsers cannot see WebSocket pings), reconnection with exponential backoff
// and jitter, and resume with replay so that every server message is processed exactly once, in
// order, across dropped connections. The other way, `signal` and `broadcast` frames are
// numbered (`cseq`) and kept until a `pong` or `resumed` confirms them: those a dropped link
// swallowed are sent again after the resume, and the server drops what it had already, so each
// takes effect exactly once. It knows nothing about RTCPeerConnection: see
// webrtc-room.js for that side.
//
// Transports (docs/protocol.md, "When WebSockets are blocked"): a WebSocket first; when the
// upgrade fails, or the socket dies before any frame (or, twice in a row, abnormally within a
// few seconds of opening), SSE + POST, then long-polling. The transport that worked is
// remembered for the page's lifetime (per server), so later connections start there. A session
// on an HTTP transport tries a WebSocket again after `upgradeProbeMs` (then after twice as long
// each time, up to 10 minutes): one that resumes the session takes it over with no reconnect.
// `options.transports` limits or reorders the list (e.g. ['long-poll']). Over HTTP the protocol
// is the same: the session token is the resume token, frames sent are POSTed in batches, a
// broken stream or poll is reopened from the last seq within the resume grace period (an empty
// send beside a reopened poll shows at once that the link is back: sends go out again then).
//
//   import { SignalingClient } from './signaling-client.js';
//   const client = new SignalingClient('wss://example.org/ws', { room: 'demo', name: 'Ada' });
//   client.addEventListener('signal', (e) => console.log(e.detail.from, e.detail.signal));
//   const session = await client.connect();      // resolves with the first welcome
//   client.signal(session.peers[0].id, { kind: 'offer', sdp });
//
// Events (CustomEvent, payload in `event.detail`):
//   state         { state, previous, code?, message?, attempt?, retryInMs?, serverError? }
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
//   transport     { transport, previous } the transport in use changed ('websocket'|'sse'|'long-poll')
//
// States: idle -> connecting -> joined <-> reconnecting; failed (a refusal such as room_full,
// no more retries) and closed (close() or leave()) are final: connect() then rejects (a client
// does not come back: make a new one). A reconnect after the server answered with an error (a
// refusal to retry, such as too_many_rooms) carries it in the state's `serverError`.

export const PROTOCOL_VERSIONS = Object.freeze([1]);

/** Every transport, in the order they are tried. */
export const TRANSPORTS = Object.freeze(['websocket', 'sse', 'long-poll']);

/** The transport that worked, per server (HTTP root), for the page's lifetime. */
const workingTransports = new Map();

/** Forgets which transports worked: the next connection tries them in order again (tests). */
export function forgetTransports() { workingTransports.clear(); }

/**
 * The client rules of docs/protocol.md ("Client rules"), the same for every client: reconnect
 * backoff, acks, stats reports, resending an unanswered offer, and per error code the close code that follows it (null: the socket stays
 * open) and what the client does (continue, retry, rejoin, fatal). A test compares this table
 * with the one the server's protocol.rs generates.
 */
export const CLIENT_RULES = Object.freeze({
  backoff: Object.freeze({ initialMs: 250, maxMs: 8000, factor: 2, jitter: 0.5 }),
  ack: Object.freeze({ every: 16, delayMs: 200 }),
  confirm: Object.freeze({ every: 16, delayMs: 1000 }),
  stats: Object.freeze({ everyMs: 15000 }),
  offer: Object.freeze({ resendAfterMs: 5000 }),
  errors: Object.freeze({
    unsupported_version: { close: 1008, retry: 'fatal' },
    invalid_message: { close: null, retry: 'continue' },
    binary_not_supported: { close: null, retry: 'continue' },
    message_too_large: { close: 1009, retry: 'retry' },
    not_joined: { close: null, retry: 'continue' },
    already_joined: { close: null, retry: 'continue' },
    invalid_room_id: { close: 1008, retry: 'fatal' },
    invalid_name: { close: 1008, retry: 'fatal' },
    room_full: { close: 1013, retry: 'fatal' },
    too_many_rooms: { close: 1013, retry: 'retry' },
    too_many_sessions: { close: 1013, retry: 'retry' },
    too_many_connections: { close: null, retry: 'retry' },
    unknown_peer: { close: null, retry: 'continue' },
    rate_limited: { close: null, retry: 'continue' },
    unauthorized: { close: 1008, retry: 'fatal' },
    forbidden: { close: 1008, retry: 'fatal' },
    resume_failed: { close: 1008, retry: 'rejoin' },
    replay_overflow: { close: 1008, retry: 'rejoin' },
    slow_consumer: { close: 1008, retry: 'rejoin' },
    draining: { close: 1013, retry: 'retry' },
    internal: { close: 1011, retry: 'retry' },
    unavailable: { close: 1013, retry: 'retry' },
    kicked: { close: 1008, retry: 'fatal' },
    room_closed: { close: 1008, retry: 'fatal' },
  }),
});

const codesOfClass = (retry) =>
  new Set(Object.entries(CLIENT_RULES.errors).filter(([, r]) => r.retry === retry).map(([c]) => c));
/** Error codes that end the attempt to join, or a joined session: retrying cannot help. */
const FATAL_JOIN_CODES = codesOfClass('fatal');
/** The longest wait between two tries of a WebSocket from an HTTP transport (upgradeProbeMs). */
const UPGRADE_PROBE_MAX_MS = 600000;

/** Error codes that end the session on the server: a fresh join is needed. */
const SESSION_ENDING_CODES = codesOfClass('rejoin');

const DEFAULTS = Object.freeze({
  room: undefined,
  name: undefined,
  token: undefined,
  /** Reconnect delays: min(maxMs, initialMs * factor^attempt), then scaled by a random factor in [1 - jitter, 1]. */
  backoff: CLIENT_RULES.backoff,
  /** Give up after this many consecutive failed attempts (Infinity: never). */
  maxReconnectAttempts: Infinity,
  /** A socket that does not open and get an answer to join/resume within this time is dropped. */
  connectTimeoutMs: 10000,
  /** Send an ack after this many unacked frames, or after ackDelayMs, whichever comes first. */
  ackEvery: CLIENT_RULES.ack.every,
  ackDelayMs: CLIENT_RULES.ack.delayMs,
  /** Ping (its pong confirms numbered frames) after this many since the last ping, or after confirmDelayMs. */
  confirmEvery: CLIENT_RULES.confirm.every,
  confirmDelayMs: CLIENT_RULES.confirm.delayMs,
  /** The WebSocket constructor (for tests or non-browser runtimes). */
  WebSocket: globalThis.WebSocket,
  /** Transports to try, in order: any of TRANSPORTS (e.g. ['sse'] forces SSE + POST). */
  transports: TRANSPORTS,
  /** The root of the HTTP transports, e.g. `https://host/http` (default: from the WebSocket URL). */
  httpUrl: undefined,
  /** Two WebSockets in a row closing abnormally (1006) this soon after opening count as blocked. */
  earlyCloseMs: 4000,
  /** SSE: a first stream without a byte for this long (from its request), or a later one without its headers, is taken as buffered: long-poll instead. */
  sseFirstByteMs: 4000,
  /** Long-polling: a poll unanswered this long is taken as lost (the server answers within 25 s). */
  pollTimeoutMs: 40000,
  /**
   * On SSE or long-polling with 'websocket' before it in `transports`: try a WebSocket again
   * after this long, then after twice as long each time, up to 10 minutes (0: never).
   */
  upgradeProbeMs: 30000,
  /** The fetch function of the HTTP transports. */
  fetch: globalThis.fetch?.bind(globalThis),
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
    this.stats = {
      resumes: 0, replayed: 0, rejoins: 0, reconnectAttempts: 0, duplicatesDropped: 0, iceServerUpdates: 0,
      /** Numbered frames sent again after a resume because the server had not handled them. */
      resent: 0,
      /** HTTP transports: event streams or polls reopened from the last seq (no resume needed). */
      streamReconnects: 0,
      /** Transports given up on for the next one (a blocked WebSocket, a buffered event stream). */
      fallbacks: 0,
      /** Sessions moved from an HTTP transport back onto a WebSocket (upgradeProbeMs). */
      upgrades: 0,
    };
    /** @type {'websocket'|'sse'|'long-poll'|null} the transport of the current (or last) session */
    this.transport = null;
    this._transports = this._usableTransports();
    this._transportIndex = this._startIndex();

    /** The current link: a WebSocket, or an HttpLink (which has the same surface). */
    this._ws = null;
    this._nextId = 1;
    this._pending = new Map(); // request id -> the message, to explain errors
    this._outbox = []; // messages queued while not joined
    this._nextCseq = 1; // the cseq of the next signal or broadcast
    this._unconfirmed = []; // numbered messages sent, not yet confirmed by pong/resumed
    this._unwritten = new WeakSet(); // those of them a link gave back unwritten
    this._sincePing = 0; // numbered messages sent since the last ping
    this._confirmTimer = null;
    this._confirming = true; // false once the server showed it does not confirm (no `received`)
    this._attempt = 0;
    this._retryTimer = null;
    this._connectTimer = null;
    this._pingTimer = null;
    this._ackTimer = null;
    this._lastAcked = 0;
    this._lastFrameAt = 0;
    this._drainDelayMs = null;
    this._holdUntil = 0;
    this._firstJoin = null;
    /** The id of the resume sent on the current link: only its `resumed` is the answer. */
    this._resumeRef = null;
    // Back to WebSocket: the next probe's delay, its timer, the probe socket, and whether the
    // session is moving onto it (requests wait until its `resumed`).
    this._upgradeDelayMs = null;
    this._upgradeTimer = null;
    this._probe = null;
    this._switching = false;
    /** The error the server answered the current attempt with ({ code, message }), for the reconnecting state. */
    this._serverError = null;
    this._onOnline = () => { if (this.state === 'reconnecting') this.reconnectNow(); };
    globalThis.addEventListener?.('online', this._onOnline);
  }

  get peerId() { return this.session?.peer_id ?? null; }

  /**
   * Connects and joins; resolves with the session of the first welcome, rejects on a refusal.
   * A closed or failed client rejects: those states are final (a resolved first join must not
   * hand out a session that is over).
   */
  connect() {
    if (this.state === 'closed') return Promise.reject(new SignalingError('closed', 'client closed: make a new client'));
    if (this.state === 'failed') {
      const { code = 'failed', message = 'client failed' } = this.stateInfo || {};
      return Promise.reject(new SignalingError(code, message));
    }
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

  /**
   * Reports the connection to `peer` (docs/protocol.md, `stats`): `report` holds `pair`
   * ({local, remote, protocol, relay_protocol?, relay_url?} or null), `rtt_ms`, `bytes_sent`,
   * `bytes_received`. Sent only while joined (a stale report is worth nothing after a reconnect).
   */
  reportStats(peer, report) {
    if (this.state !== 'joined' || this._switching || this._ws?.readyState !== 1) return false;
    const msg = { type: 'stats', id: this._nextId++, peer, ...report };
    // The caller never saw this id (the call returns a boolean): the error names no `ref`.
    if (!this._fits(msg, false)) return false;
    this._remember(msg);
    this._send(msg);
    return true;
  }

  /** Sends a small JSON value to every other peer of the room. */
  broadcast(data) { return this._request({ type: 'broadcast', data }); }

  /** Leaves the room for good and closes the socket. */
  leave() {
    if (this.state === 'joined' && this._ws?.readyState === 1) this._send({ type: 'leave', id: this._nextId++ });
    // A probe's resume may have moved the session onto it: say it there too (where the
    // session is not, the server refuses it, not_joined).
    if (this._probe?.resumeSent) {
      try { this._probe.ws.send(JSON.stringify({ type: 'leave', id: this._nextId++ })); } catch { /* closing */ }
    }
    this.close();
  }

  /** Closes the socket without leaving: the server keeps the session for its grace period. */
  close() {
    if (this.state === 'closed') return;
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
    if (this._ws) { this._ws.retryNow?.(); return; }
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._holdUntil = 0;
    this._open();
  }

  // --- transports ---

  /** The configured transports this runtime can use (WebSocket needs a constructor, HTTP fetch). */
  _usableTransports() {
    const wanted = (this.options.transports || TRANSPORTS).filter((t) => TRANSPORTS.includes(t));
    const usable = wanted.filter((t) => (t === 'websocket' ? !!this.options.WebSocket : !!this.options.fetch));
    return usable.length ? usable : ['websocket'];
  }

  /** The HTTP endpoints (derived from the WebSocket URL unless `httpUrl` is given). */
  _httpEndpoints() {
    if (!this._endpoints) {
      this._endpoints = httpEndpoints(this.url);
      if (this.options.httpUrl) {
        // Another root; the room stays where the WebSocket URL put it (a path after the root,
        // or in `join` for a room named like a transport path).
        const derived = this._endpoints;
        const root = String(this.options.httpUrl).replace(/\/+$/, '');
        const roomPath = derived.open.slice(derived.root.length).split('?')[0];
        this._endpoints = { ...derived, root, open: `${root}${roomPath}${new URL(this.url, globalThis.location?.href).search}` };
      }
    }
    return this._endpoints;
  }

  /** Where a connection starts: the transport that worked before on this page, else the first. */
  _startIndex() {
    let key;
    try { key = this._httpEndpoints().root; } catch { return 0; }
    const i = this._transports.indexOf(workingTransports.get(key));
    return i >= 0 ? i : 0;
  }

  /** A transport carried a frame: it works; remember it for this page and report a change. */
  _transportWorks(kind) {
    try { workingTransports.set(this._httpEndpoints().root, kind); } catch { /* no HTTP root */ }
    if (this.transport === kind) return;
    const previous = this.transport;
    this.transport = kind;
    this._emit('transport', { transport: kind, previous });
  }

  /**
   * Whether a link failed the way a blocked transport fails: it never carried a frame (upgrade
   * refused, a proxy's error page, nothing within the connect timeout), or it was the second
   * WebSocket in a row to die abnormally within `earlyCloseMs` of opening (a proxy that cuts
   * sockets; once could be a server that crashed).
   */
  _looksBlocked(reason, closeEvent) {
    if (reason === 'dropped') return false;
    if (this._linkFrames === 0) return true;
    if (this._linkKind !== 'websocket') return false;
    const early = closeEvent?.code === 1006 && Date.now() - this._linkOpenedAt < this.options.earlyCloseMs;
    this._earlyCloses = early ? (this._earlyCloses || 0) + 1 : 0;
    return this._earlyCloses >= 2;
  }

  /** Moves on to the next transport at once; false when none is left (back to the first). */
  _fallBack() {
    if (this._transportIndex + 1 >= this._transports.length) {
      this._transportIndex = this._startIndex();
      return false;
    }
    this._transportIndex += 1;
    this._earlyCloses = 0;
    this.stats.fallbacks += 1;
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => { this._retryTimer = null; this._open(); }, 0);
    return true;
  }

  _newLink(kind) {
    if (kind === 'websocket') return new this.options.WebSocket(this.url);
    const link = new HttpLink(this._httpEndpoints(), {
      mode: kind,
      canPoll: this._transports.includes('long-poll'),
      fetch: this.options.fetch,
      graceMs: this.session?.resume_grace_ms,
      maxBodyBytes: this.session?.max_message_bytes,
      firstByteMs: this.options.sseFirstByteMs,
      pollTimeoutMs: this.options.pollTimeoutMs,
      sendTimeoutMs: this.options.connectTimeoutMs,
      // Numbered frames are kept by the client (and sent again) only while the server confirms.
      numberedKept: () => this._confirming,
      reopenDelayMs: (attempt) => Math.max(this._backoffMs(attempt), this._takeDrainDelayMs()),
      maxReopenAttempts: this.options.maxReconnectAttempts,
    });
    link.onstall = (info) => this._onStall(link, info);
    link.onrecover = () => this._onRecover(link);
    link.onalive = () => { if (link === this._ws) this._lastFrameAt = Date.now(); };
    link.ontransport = (mode) => this._onLinkDowngrade(link, mode);
    return link;
  }

  /** An HTTP link's event stream or poll broke; it reopens it from the last seq by itself. */
  _onStall(link, { message, attempt, retryInMs }) {
    if (link !== this._ws || (this.state !== 'joined' && this.state !== 'reconnecting')) return;
    clearInterval(this._pingTimer);
    this._pingTimer = null;
    this.stats.reconnectAttempts += 1;
    this._setState('reconnecting', { code: 'closed', message, attempt, retryInMs, retryAt: Date.now() + retryInMs });
  }

  /** The stream or poll is back: every frame after the last seq follows, nothing was lost. */
  _onRecover(link) {
    if (link !== this._ws || this.state !== 'reconnecting') return;
    this.stats.streamReconnects += 1;
    this._joined(link);
  }

  /** An HTTP link switched from a buffered event stream to long-polling (same session). */
  _onLinkDowngrade(link, mode) {
    if (link !== this._ws) return;
    this.stats.fallbacks += 1;
    this._linkKind = mode;
    const i = this._transports.indexOf(mode);
    if (i >= 0) this._transportIndex = i;
    // Mid-session (the stream had worked): the next frame comes by long-polling.
    if (this._linkWorked) this._transportWorks(mode);
  }

  // --- socket lifecycle ---

  _open() {
    // What the server said to an earlier attempt does not explain this one.
    this._serverError = null;
    const kind = this._transports[this._transportIndex] || this._transports[0];
    let ws;
    try {
      ws = this._newLink(kind);
    } catch (err) {
      this._linkKind = kind;
      this._linkFrames = 0;
      this._linkWorked = false;
      if (!this._fallBack()) this._scheduleReconnect('unreachable', String(err.message || err));
      return;
    }
    this._ws = ws;
    this._opened = false;
    this._linkKind = kind;
    this._linkFrames = 0;
    this._linkWorked = false;
    this._linkOpenedAt = Date.now();
    ws.onopen = () => {
      this._opened = true;
      this._linkOpenedAt = Date.now();
      this._lastFrameAt = Date.now();
      // Resume whenever there is a session, however long ago the link broke: only the server
      // knows whether it still holds it (a cluster's grace restarts when its shared store comes
      // back from an outage); a refusal (`resume_failed`) resets the session and joins afresh.
      if (this.session) {
        this._resumeRef = this._nextId++;
        ws.send(JSON.stringify({
          type: 'resume', id: this._resumeRef, versions: PROTOCOL_VERSIONS,
          resume_token: this.session.resume_token, last_seq: this.lastSeq,
        }));
      } else {
        this._sendJoin(ws);
      }
    };
    ws.onmessage = (ev) => this._onFrame(ws, ev.data);
    // An HttpLink says whether its session was opened (`established`); a WebSocket, by opening.
    ws.onclose = (ev) => this._onSocketGone(ws, (ev.established ?? this._opened) ? 'closed' : 'unreachable', ev);
    ws.onerror = () => { /* always followed by close */ };
    clearTimeout(this._connectTimer);
    this._connectTimer = setTimeout(() => {
      if (this._ws === ws && this.state !== 'joined') {
        // A join sent on this link may have opened a session whose welcome never came: leave
        // it, or the others would see this peer twice until its grace period ends (the next
        // link joins afresh). A session being resumed is kept for the next link.
        if (this._opened && !this.session) {
          try { ws.send(JSON.stringify({ type: 'leave' })); } catch { /* closed meanwhile */ }
        }
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

  _detach(ws) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    if (ws instanceof HttpLink) ws.onstall = ws.onrecover = ws.onalive = ws.ontransport = null;
  }

  _onSocketGone(ws, reason, closeEvent) {
    if (ws !== this._ws) return;
    const probe = this._probe;
    if (closeEvent && probe?.resumeSent && probe.link === ws && !probe.linkGone) {
      // Ended by the move onto the probe, most likely: its answer says so next (or its end,
      // within connectTimeoutMs, sends this end on as any other).
      probe.linkGone = () => this._onSocketGone(ws, reason, closeEvent);
      return;
    }
    this._detach(ws);
    this._switching = false;
    this._endProbe();
    this._ws = null;
    clearInterval(this._pingTimer);
    this._pingTimer = null;
    clearTimeout(this._connectTimer);
    if (this.state === 'closed' || this.state === 'failed') return;
    this._requeue(ws.takeUnsent?.() || []);
    const detail = closeEvent ? `${reason} (close code ${closeEvent.code}${closeEvent.reason ? `: ${closeEvent.reason}` : ''})` : reason;
    if (closeEvent?.unreachable) {
      // An HTTP link whose request could not reach the server at all: the next HTTP transport
      // cannot either. The next attempt starts over from the first transport, after the backoff.
      this._transportIndex = this._startIndex();
    } else if (this._looksBlocked(reason, closeEvent) && this._fallBack()) {
      // Mid-session the switch is a reconnect like any other (at once, on the next transport):
      // the state says so, and 'joined' follows once the new link resumed.
      if (this.state === 'joined') {
        this._attempt += 1;
        this.stats.reconnectAttempts += 1;
        this._setState('reconnecting', { code: reason, message: detail, attempt: this._attempt, retryInMs: 0, retryAt: Date.now() });
      }
      return;
    }
    // An HTTP link that spent the reconnect attempts reopening: no further attempt.
    if (closeEvent?.gaveUp) { this._fail(reason, detail); return; }
    if (closeEvent?.retryAfterMs) this._holdUntil = Math.max(this._holdUntil, Date.now() + closeEvent.retryAfterMs);
    this._scheduleReconnect(reason, detail);
  }

  /** Requests an HTTP link could not deliver go out again on the next link of the same session. */
  _requeue(texts) {
    if (!this.session) return;
    const msgs = [];
    for (const text of texts) {
      try {
        const msg = JSON.parse(text);
        // Numbered messages are still in _unconfirmed: the resume sends them again. Never
        // written, they may go in a new session too, if the old one is lost.
        if (msg.cseq != null && this._confirming) {
          const kept = this._unconfirmed.find((m) => m.cseq === msg.cseq);
          if (kept) this._unwritten.add(kept);
          continue;
        }
        if (msg.type !== 'ack' && msg.type !== 'ping' && msg.type !== 'join' && msg.type !== 'resume') msgs.push(msg);
      } catch { /* not ours */ }
    }
    this._outbox.unshift(...msgs);
  }

  _scheduleReconnect(code, message) {
    if (this.state === 'closed' || this.state === 'failed') return;
    this._attempt += 1;
    this.stats.reconnectAttempts += 1;
    // The server was reached but refused (too_many_rooms, an HTTP 429 ...): say that, not "unreachable".
    const serverError = this._serverError ? { serverError: this._serverError } : {};
    if (this._attempt > this.options.maxReconnectAttempts) {
      this._fail(code, `gave up after ${this._attempt - 1} attempts: ${message}`, serverError);
      return;
    }
    let delay = this._backoffMs(this._attempt);
    delay = Math.max(delay, this._takeDrainDelayMs());
    // A session the server ended (`rejoin`): join again at once, not after a backoff.
    if (this._rejoinAtOnce) { delay = 0; this._rejoinAtOnce = false; }
    delay = Math.max(delay, this._holdUntil - Date.now(), 0);
    delay = Math.round(delay);
    this._setState('reconnecting', { code, message, attempt: this._attempt, retryInMs: delay, retryAt: Date.now() + delay, ...serverError });
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => { this._retryTimer = null; this._open(); }, delay);
  }

  /**
   * The wait before reconnect attempt `attempt` (1, 2, ...), and before an HTTP link reopens
   * its stream or poll: the backoff (`options.backoff`).
   */
  _backoffMs(attempt) {
    const { initialMs, maxMs, factor, jitter } = this.options.backoff;
    const delay = Math.min(maxMs, initialMs * factor ** (attempt - 1));
    return Math.round(delay * (1 - jitter * Math.random()));
  }

  // --- back to WebSocket ---

  /**
   * On an HTTP link with 'websocket' before its transport in the list: a WebSocket is tried
   * again after the probe delay (a server that refused WebSockets for a while, a proxy that
   * stopped blocking them).
   */
  _scheduleUpgrade(link) {
    const first = Number(this.options.upgradeProbeMs);
    const wsIndex = this._transports.indexOf('websocket');
    if (!(Number.isFinite(first) && first > 0) || !(link instanceof HttpLink)) return;
    if (wsIndex < 0 || wsIndex > this._transports.indexOf(this._linkKind)) return;
    // One countdown at a time: a link that recovers from stalls often still gets its try.
    if (this._upgradeTimer || this._probe) return;
    const delay = Math.min(UPGRADE_PROBE_MAX_MS, this._upgradeDelayMs ?? first);
    this._upgradeTimer = setTimeout(() => {
      this._upgradeTimer = null;
      if (this._ws instanceof HttpLink) this._probeWebSocket(this._ws);
    }, delay);
  }

  /**
   * Opens a WebSocket beside the HTTP link and resumes the session on it. A refusal (or no
   * answer within connectTimeoutMs) leaves the session on the HTTP link; any frame of the
   * session means the server moved it onto the WebSocket, which becomes the link. From the
   * resume on, the HTTP link opens no stream or poll and the client sends no `ack`: either
   * would take the session back, or acknowledge past the resume's `last_seq` (refused).
   */
  _probeWebSocket(link) {
    if (link !== this._ws || this.state !== 'joined' || this._switching || !this.session) return;
    const delay = Math.min(UPGRADE_PROBE_MAX_MS, this._upgradeDelayMs ?? Number(this.options.upgradeProbeMs));
    this._upgradeDelayMs = Math.min(UPGRADE_PROBE_MAX_MS, 2 * delay);
    let ws;
    try { ws = new this.options.WebSocket(this.url); } catch { this._scheduleUpgrade(link); return; }
    const id = this._nextId++;
    // `linkGone`: the HTTP link's end, held while the server may have moved the session here
    // (it ends the link's stream as it answers the resume, and that end may come first).
    const probe = { ws, link, timer: null, resumeSent: false, linkGone: null };
    this._probe = probe;
    const giveUp = () => {
      if (this._probe !== probe) return;
      this._endProbe();
      if (probe.linkGone) { probe.linkGone(); return; }
      if (link !== this._ws || this.state !== 'joined') return;
      this._scheduleAck();
      this._scheduleUpgrade(link);
    };
    // The opening and then the answer each get connectTimeoutMs.
    probe.timer = setTimeout(giveUp, this.options.connectTimeoutMs);
    ws.onopen = () => {
      if (this._probe !== probe || link !== this._ws || !this.session) { giveUp(); return; }
      // Nothing of the HTTP link may reach the server behind the resume (the opening's
      // timer still runs meanwhile).
      link.settle().then(() => {
        if (this._probe !== probe || link !== this._ws || !this.session) return;
        ws.send(JSON.stringify({
          type: 'resume', id, versions: PROTOCOL_VERSIONS, resume_token: this.session.resume_token, last_seq: this.lastSeq,
        }));
        probe.resumeSent = true;
        clearTimeout(probe.timer);
        probe.timer = setTimeout(giveUp, this.options.connectTimeoutMs);
      });
    };
    ws.onmessage = (ev) => {
      let seq = 0;
      try { seq = Number(JSON.parse(ev.data).seq) || 0; } catch { /* not the protocol */ }
      // A refusal (seq 0: draining, a full node ...): the session stays on the HTTP link.
      if (seq <= 0 || this._probe !== probe || link !== this._ws) { giveUp(); return; }
      clearTimeout(probe.timer);
      this._probe = null;
      this._moveOnto(link, ws, ev.data, id);
    };
    ws.onclose = giveUp;
    ws.onerror = () => { /* always followed by close */ };
  }

  /** Closes a probe WebSocket that has not taken the session (if any). */
  _endProbe() {
    clearTimeout(this._upgradeTimer);
    this._upgradeTimer = null;
    const probe = this._probe;
    if (!probe) return;
    this._probe = null;
    clearTimeout(probe.timer);
    probe.link.release?.();
    probe.ws.onopen = probe.ws.onmessage = probe.ws.onclose = probe.ws.onerror = null;
    try { probe.ws.close(1000, 'upgrade probe'); } catch { /* closing already */ }
  }

  /**
   * The server moved the session from the HTTP link onto `ws` (the first frame of its answer
   * is `first`): `ws` becomes the link. Requests wait until its `resumed`, which sends first,
   * in order, what the server had not handled (as after any resume); what the HTTP link had
   * queued goes on `ws`.
   */
  _moveOnto(link, ws, first, probeRef) {
    this._detach(link);
    this._requeue(link.takeUnsent?.() || []);
    try { link.close(); } catch { /* closed already */ }
    clearInterval(this._pingTimer);
    this._pingTimer = null;
    this._switching = true;
    this._resumeRef = probeRef;
    this._ws = ws;
    this._opened = true;
    this._linkKind = 'websocket';
    this._transportIndex = this._transports.indexOf('websocket');
    this._linkFrames = 0;
    this._linkWorked = false;
    this._linkOpenedAt = Date.now();
    this._earlyCloses = 0;
    this.stats.upgrades += 1;
    ws.onmessage = (ev) => this._onFrame(ws, ev.data);
    ws.onclose = (ev) => this._onSocketGone(ws, 'closed', ev);
    ws.onerror = () => { /* always followed by close */ };
    clearTimeout(this._connectTimer);
    this._connectTimer = setTimeout(() => {
      if (this._ws === ws && this._switching) {
        try { ws.close(4001, 'connect timeout'); } catch { /* ignore */ }
        this._onSocketGone(ws, 'timeout');
      }
    }, this.options.connectTimeoutMs);
    this._onFrame(ws, first);
  }

  // --- incoming frames ---

  _onFrame(ws, data) {
    if (ws !== this._ws) return;
    this._lastFrameAt = Date.now();
    let frame;
    try {
      // A WebSocket delivers text; an HttpLink, frames it already parsed.
      frame = typeof data === 'string' ? JSON.parse(data) : data;
    } catch {
      this._emit('error', { code: 'invalid_frame', message: 'the server sent a frame that is not JSON' });
      return;
    }
    this._linkFrames += 1;
    const seq = Number(frame.seq);
    // Works: it carried a session's frame. A refusal (`seq` 0) says only that the server was
    // reached, so a refused upgrade that fell back to HTTP is not remembered as the transport.
    if (!this._linkWorked && seq > 0) {
      this._linkWorked = true;
      this._transportWorks(this._linkKind);
    }
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
        this._restartNumbering();
        this._hadSession = true;
        this._takeSession(frame, true);
        this._joined(ws);
        this._emit('welcome', { session: this.session });
        this._emit('ice-servers', { iceServers: this.iceServers });
        this._firstJoin?.resolve(this.session);
        break;
      }
      case 'resumed': {
        // An earlier resume's answer, replayed (docs/protocol.md, `resume`): its session info
        // and `received` are old; the answer to this link's resume follows.
        if (frame.ref != null && this._resumeRef != null && frame.ref !== this._resumeRef) break;
        this.stats.resumes += 1;
        this.stats.replayed += Number(frame.replayed) || 0;
        this._takeSession(frame, false);
        // What the old link swallowed goes out first (_joined flushes the outbox), in order.
        this._confirmed(frame.received);
        this.stats.resent += this._unconfirmed.length;
        this._outbox.unshift(...this._unconfirmed.splice(0));
        this._sincePing = 0;
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
        this._confirmed(frame.received);
        break;
      case 'draining':
        this._drainDelayMs = Number(frame.reconnect_after_ms) || 0;
        this._emit('draining', { reason: frame.reason, reconnectAfterMs: this._drainDelayMs });
        // Leave the draining server after `reconnect_after_ms` (not at the end of its drain
        // time): reconnect and resume, through the balancer, on another one.
        clearTimeout(this._drainTimer);
        this._drainTimer = setTimeout(() => this._leaveDrainingServer(ws), this._drainDelayMs);
        break;
      case 'error':
        this._onError(ws, frame);
        break;
      default:
        // A newer server may add message types: ignore what we do not know.
        break;
    }
  }

  /** The `reconnect_after_ms` of a `draining` frame on `ws` passed: reconnect now (no wait). */
  _leaveDrainingServer(ws) {
    this._drainTimer = null;
    if (ws !== this._ws || this.state !== 'joined') return;
    this._drainDelayMs = null;
    try { ws.close(4000, 'server draining'); } catch { /* ignore */ }
    this._onSocketGone(ws, 'draining');
  }

  /**
   * A draining server's `reconnect_after_ms`, once: the first reconnect or reopen after the
   * `draining` frame waits at least that long (0 when none is pending).
   */
  _takeDrainDelayMs() {
    const delay = this._drainDelayMs ?? 0;
    this._drainDelayMs = null;
    return delay;
  }

  _takeSession(frame, fresh) {
    // Back in a session: a drain delay not spent belongs to the server left behind.
    this._drainDelayMs = null;
    const { type, seq, ref, replayed, received, ...session } = frame;
    void type; void seq; void ref; void replayed; void received;
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
    this._serverError = null;
    this._holdUntil = 0;
    this._switching = false;
    clearTimeout(this._connectTimer);
    ws.configure?.(this.session);
    this._setState('joined');
    this._startPings(ws);
    const queued = this._outbox.splice(0);
    for (const msg of queued) this._send(msg);
    this._scheduleUpgrade(ws);
  }

  _onError(ws, frame) {
    const { code, message, ref } = frame;
    const request = ref != null ? this._pending.get(ref) : undefined;
    if (ref != null) this._pending.delete(ref);
    // An error that ends the link ('retry', e.g. too_many_rooms), or any answer to the join
    // but a session reset: the reason of the reconnect that follows. Errors about single
    // requests of a session are not, nor a resume refused (the page joins again at once).
    const retry = CLIENT_RULES.errors[code]?.retry;
    if (retry === 'retry' || (this.state !== 'joined' && retry !== 'rejoin')) this._serverError = { code, message };
    // A refused join, or a session an operator ended (`kicked`, `room_closed`: the server
    // closes the socket after it): retrying cannot help, and coming back would defeat the order.
    if (FATAL_JOIN_CODES.has(code) && (this.state !== 'joined' || CLIENT_RULES.errors[code].close != null)) {
      this._emit('error', { code, message, ref, request });
      this._fail(code, message);
      return;
    }
    if (SESSION_ENDING_CODES.has(code)) {
      // The server cannot continue this session (it closes the socket): join afresh on the
      // next socket, at once.
      this._resetSession(code);
      this._attempt = 0;
      this._rejoinAtOnce = true;
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

  _fail(code, message, extra = {}) {
    this._clearTimers();
    const ws = this._ws;
    this._ws = null;
    if (ws) { this._detach(ws); try { ws.close(1000, code); } catch { /* ignore */ } }
    this._setState('failed', { code, message, ...extra });
    this._firstJoin?.reject(new SignalingError(code, message));
  }

  // --- outgoing ---

  _request(msg) {
    const id = this._nextId++;
    const full = { ...msg, id };
    this._remember(full);
    if (this.state === 'joined' && !this._switching && this._ws?.readyState === 1) this._send(full);
    else if (this.state !== 'closed' && this.state !== 'failed') this._outbox.push(full);
    return id;
  }

  /** Keeps a request by id (the latest 1024) for the `request` of an error that names it. */
  _remember(msg) {
    this._pending.set(msg.id, msg);
    if (this._pending.size > 1024) this._pending.delete(this._pending.keys().next().value);
  }

  _send(msg) {
    const numbered = msg.type === 'signal' || msg.type === 'broadcast';
    if (numbered && msg.cseq == null) {
      // Refused with a close (1009) at every resume if sent: drop it before it keeps a number.
      msg.cseq = this._nextCseq;
      if (!this._fits(msg)) { delete msg.cseq; return; }
      this._nextCseq += 1;
    }
    try {
      // An HttpLink returns false when it is closed (a WebSocket throws, or drops silently).
      if (this._ws.send(JSON.stringify(msg)) === false) { this._outbox.push(msg); return; }
    } catch {
      this._outbox.push(msg);
      return;
    }
    if (!numbered || !this._confirming) return;
    // Kept until a pong or resumed says the server handled it (docs/protocol.md, "cseq").
    this._unconfirmed.push(msg);
    this._sincePing += 1;
    if (this._sincePing >= this.options.confirmEvery) this._confirmPing();
    else if (!this._confirmTimer) this._confirmTimer = setTimeout(() => this._confirmPing(), this.options.confirmDelayMs);
  }

  /**
   * Whether `msg` fits the server's `max_message_bytes`; if not, an `error` event
   * (`message_too_large`, `ref` = its id when `named`: the call returns it) fires once the
   * current call has returned, so the caller already holds the id.
   */
  _fits(msg, named = true) {
    const max = Number(this.session?.max_message_bytes) || Infinity;
    const bytes = new TextEncoder().encode(JSON.stringify(msg)).length;
    if (bytes <= max) return true;
    const { cseq, ...request } = msg;
    const detail = { code: 'message_too_large', message: `${msg.type} of ${bytes} bytes not sent: the server takes at most ${max}`, ref: named ? msg.id : undefined, request };
    queueMicrotask(() => this._emit('error', detail));
    return false;
  }

  /** Sends a ping whose pong confirms the numbered messages sent so far. */
  _confirmPing() {
    clearTimeout(this._confirmTimer);
    this._confirmTimer = null;
    if (this._sincePing === 0 || this.state !== 'joined' || this._ws?.readyState !== 1) return;
    this._sincePing = 0;
    try { this._ws.send(JSON.stringify({ type: 'ping', id: this._nextId++ })); } catch { /* the link is going */ }
  }

  /** The server handled every numbered message up to `received` (a frame's field). */
  _confirmed(received) {
    if (received == null) {
      // A server that predates cseq: it will never confirm, so keep nothing.
      this._confirming = false;
      this._unconfirmed = [];
      return;
    }
    let n = 0;
    while (n < this._unconfirmed.length && this._unconfirmed[n].cseq <= received) n += 1;
    this._unconfirmed.splice(0, n);
  }

  /**
   * A new session: numbering starts over, and nothing the old one may have taken is sent again;
   * broadcasts a link gave back unwritten go first (signals named the old peers).
   */
  _restartNumbering() {
    this._nextCseq = 1;
    this._outbox.unshift(...this._unconfirmed.filter((m) => this._unwritten.has(m) && m.type === 'broadcast'));
    this._unconfirmed = [];
    this._sincePing = 0;
    for (const msg of this._outbox) delete msg.cseq;
  }

  _scheduleAck() {
    if (this.lastSeq - this._lastAcked >= this.options.ackEvery) { this._sendAck(); return; }
    if (!this._ackTimer) this._ackTimer = setTimeout(() => { this._ackTimer = null; this._sendAck(); }, this.options.ackDelayMs);
  }

  _sendAck() {
    clearTimeout(this._ackTimer);
    this._ackTimer = null;
    // Past a probe's resume, an ack over the HTTP link could overtake it: its answer (or its
    // end) acknowledges, or sends it after.
    if (this._probe?.resumeSent) return;
    if (this.lastSeq <= this._lastAcked || this._ws?.readyState !== 1) return;
    // Long-polling acknowledges by `last_seq` on the next poll.
    if (!this._ws.implicitAcks) this._ws.send(JSON.stringify({ type: 'ack', seq: this.lastSeq }));
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
      this._sincePing = 0;
      ws.send(JSON.stringify({ type: 'ping', id: this._nextId++ }));
    }, interval);
  }

  _clearTimers() {
    clearTimeout(this._drainTimer);
    this._drainTimer = null;
    clearTimeout(this._retryTimer);
    clearTimeout(this._connectTimer);
    clearTimeout(this._ackTimer);
    clearInterval(this._pingTimer);
    clearTimeout(this._confirmTimer);
    this._retryTimer = this._connectTimer = this._ackTimer = this._pingTimer = this._confirmTimer = null;
    this._endProbe();
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

// --- HTTP transports: SSE + POST, and long-polling (docs/protocol.md, "When WebSockets are blocked") ---

/** Close codes after which a stream is not reopened: the session is over, or was taken over. */
const FINAL_CLOSE_CODES = new Set([1000, 1008, 1009, 1011]);

/** A poll sent this long ago has reached the server (HttpLink.settle()). */
const POLL_SETTLE_MS = 500;

/** Frames per POST at most (a batch must also fit the message rate's burst). */
const MAX_BATCH_FRAMES = 64;

/**
 * The HTTP endpoints that go with a WebSocket URL: `wss://host/p/ws[/ROOM]?token=T` gives
 * `root` = `https://host/p/http` and `open` = `https://host/p/http[/ROOM]?token=T`; a ROOM named
 * `events`, `poll` or `send` opens at `https://host/p/http?token=T` and comes back as `room`, for
 * the `join` to name (docs/protocol.md).
 * @param {string} wsUrl
 * @param {string} [base]  for relative URLs
 * @returns {{ root: string, open: string, room?: string }}
 */
export function httpEndpoints(wsUrl, base = globalThis.location?.href) {
  const u = new URL(wsUrl, base);
  if (u.protocol === 'ws:') u.protocol = 'http:';
  else if (u.protocol === 'wss:') u.protocol = 'https:';
  const m = /^(.*?)\/ws(?:\/([^/]+))?\/?$/.exec(u.pathname);
  const prefix = m ? m[1] : u.pathname.replace(/\/+$/, '');
  const root = `${u.origin}${prefix}/http`;
  const room = m?.[2] ? decodeURIComponent(m[2]) : null;
  // Rooms named like the transport's own paths open at `/http`, the room in `join`.
  if (room && HTTP_PATH_NAMES.has(room)) return { root, open: `${root}${u.search}`, room };
  return { root, open: `${root}${m?.[2] ? `/${m[2]}` : ''}${u.search}` };
}

/** `/http/<name>` paths of the HTTP transports: no room can be opened at `/http/<name>` with these. */
const HTTP_PATH_NAMES = new Set(['events', 'poll', 'send']);

/** The close code a socket would have got for a refused HTTP request with this status. */
function closeCodeForStatus(status) {
  if (status === 413) return 1009;
  if (status === 429 || status === 503) return 1013;
  if (status >= 500) return 1011;
  return 1008;
}

/** `Retry-After` in milliseconds (seconds or an HTTP date), or undefined. */
function retryAfterMs(res) {
  const v = res?.headers?.get('Retry-After');
  if (!v) return undefined;
  const secs = Number(v);
  if (Number.isFinite(secs)) return Math.max(0, secs * 1000);
  const at = Date.parse(v);
  return Number.isFinite(at) ? Math.max(0, at - Date.now()) : undefined;
}

/** The body as JSON, or null (empty, not JSON, or the connection broke). */
async function readJson(res) {
  try {
    const text = await res.text();
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

const isErrorFrame = (f) => !!f && typeof f === 'object' && f.type === 'error' && typeof f.code === 'string';

/** Splits a `text/event-stream` into events ({ event, data, id }); comment lines call onComment. */
class SseParser {
  constructor(onEvent, onComment) {
    this.onEvent = onEvent;
    this.onComment = onComment;
    this._buf = '';
    this._reset();
  }

  _reset() { this._data = []; this._event = ''; this._id = null; }

  push(text) {
    this._buf += text;
    for (;;) {
      const i = this._buf.search(/[\r\n]/);
      if (i < 0) return;
      // A CR at the end of a chunk may be the first half of a CRLF.
      if (this._buf[i] === '\r' && i === this._buf.length - 1) return;
      const line = this._buf.slice(0, i);
      this._buf = this._buf.slice(i + (this._buf[i] === '\r' && this._buf[i + 1] === '\n' ? 2 : 1));
      this._line(line);
    }
  }

  _line(line) {
    if (line === '') {
      if (this._data.length) this.onEvent({ event: this._event || 'message', data: this._data.join('\n'), id: this._id });
      this._reset();
      return;
    }
    if (line[0] === ':') { this.onComment(); return; }
    const c = line.indexOf(':');
    const field = c < 0 ? line : line.slice(0, c);
    let value = c < 0 ? '' : line.slice(c + 1);
    if (value[0] === ' ') value = value.slice(1);
    if (field === 'data') this._data.push(value);
    else if (field === 'event') this._event = value;
    else if (field === 'id') this._id = value;
  }
}

/**
 * One session over plain HTTP, with the surface of a WebSocket that SignalingClient uses
 * (`readyState`, `send`, `close`, `onopen`/`onmessage`/`onclose`). The first frame sent (`join` or
 * `resume`) opens the session (`POST /http[/ROOM]`); frames then arrive from an event stream
 * (`GET /http/events`, read with fetch so that HTTP statuses are seen and a buffering proxy can
 * be detected) or from long-polls (`GET /http/poll`); frames sent are POSTed in order, those of
 * one tick in one request (`POST /http/send`). A stream that breaks, or ends with close 1001 or
 * 1013, is reopened from the last seq within the resume grace period (`onstall` / `onrecover`);
 * one that ends with 1000, 1008 or 1011 (or 1009) closes the link with that code, as a socket closes.
 *
 * Extra surface: `implicitAcks` (long-polling acknowledges by `last_seq`), `retryNow()`,
 * `configure(session)`, `takeUnsent()`, and the hooks `onstall`, `onrecover`, `onalive`,
 * `ontransport` (an event stream that stayed silent was replaced by long-polling).
 */
/** Whether a frame's JSON text carries a `cseq`. */
function isNumbered(text) {
  try { return JSON.parse(text).cseq != null; } catch { return false; }
}

class HttpLink {
  /**
   * @param {{ root: string, open: string, room?: string }} endpoints (`room`: the join names it)
   * @param {{ mode: 'sse'|'long-poll', canPoll?: boolean, fetch: typeof fetch, graceMs?: number,
   *   maxBodyBytes?: number, firstByteMs?: number, pollTimeoutMs?: number, sendTimeoutMs?: number }} options
   */
  constructor(endpoints, options) {
    this.endpoints = endpoints;
    this.mode = options.mode;
    this._numberedKept = options.numberedKept || (() => false);
    this.implicitAcks = this.mode === 'long-poll';
    /** 0 connecting, 1 open (frames may be sent), 3 closed: as WebSocket.readyState. */
    this.readyState = 0;
    /** The session token (the resume token), once the open request succeeded. */
    this.token = null;
    /** Whether the session was opened (a close before that means the server was not reached). */
    this.established = false;
    /** The highest seq received: where the next stream or poll starts. */
    this.lastSeq = 0;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    this.onstall = this.onrecover = this.onalive = this.ontransport = null;
    /** While the client resumes the session on a WebSocket: { promise, release } (hold()). */
    this._held = null;
    /** When the current event stream or poll request was sent (null: none in flight). */
    this._requestSince = null;
    /** Whether the server answered the current event stream request (it holds the session). */
    this._requestAttached = false;
    this._fetch = options.fetch;
    this._canPoll = !!options.canPoll;
    this._graceMs = Number(options.graceMs) || 30000;
    this._maxBodyBytes = Number(options.maxBodyBytes) || 65536;
    this._firstByteMs = options.firstByteMs ?? 4000;
    this._pollTimeoutMs = options.pollTimeoutMs ?? 40000;
    this._sendTimeoutMs = options.sendTimeoutMs ?? 10000;
    // The wait before reopening attempt N (the client's reconnect backoff), and how many
    // attempts before the link gives up (ends with `gaveUp`).
    this._reopenDelayMs = options.reopenDelayMs ?? ((n) => Math.min(4000, 100 * 2 ** (n - 1)));
    this._maxReopenAttempts = options.maxReopenAttempts ?? Infinity;
    this._queue = []; // frames (JSON text) not yet POSTed, in order
    this._inflight = null; // the batch being POSTed
    this._sending = false;
    this._posting = false; // a POST of the in-flight batch is under way
    this._flushQueued = false;
    this._abort = new AbortController(); // the open request, streams and polls
    this._stream = null; // the AbortController of the current stream or poll
    this._streamed = false; // a stream delivered bytes (the silent-stream check is done)
    this._stalledSince = 0;
    this._stallAttempt = 0;
    this._wake = null;
    this._timer = null;
    queueMicrotask(() => {
      if (this.readyState !== 0) return;
      this.readyState = 1;
      this.onopen?.();
    });
  }

  /** Queues one frame (JSON text); the first one opens the session. False once closed. */
  send(text) {
    if (this.readyState !== 1) return false;
    if (!this._openStarted) {
      this._openStarted = true;
      this._openSession(text);
      return true;
    }
    this._queue.push(text);
    if (!this._flushQueued) {
      this._flushQueued = true;
      queueMicrotask(() => { this._flushQueued = false; this._flush(); });
    }
    return true;
  }

  /**
   * Stops reading (the session is parked on the server). Frames still queued are POSTed once,
   * after the batch waiting to be retried, if any (in order; not one whose POST is under way).
   */
  close() {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.release();
    this._stop();
    const waiting = this._inflight && !this._posting ? this._inflight : [];
    if (waiting.length) this._inflight = null;
    let last = [...waiting, ...this._queue.splice(0)];
    // While a POST is under way, numbered frames must not overtake it (the server would take
    // them and drop the earlier ones as already handled): the resume sends them again.
    if (this._posting && this._numberedKept()) last = last.filter((text) => !isNumbered(text));
    if (this.token && last.length) {
      const body = last.length === 1 ? last[0] : `[${last.join(',')}]`;
      this._fetch(this._sendUrl(), {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body, cache: 'no-store', keepalive: body.length < 60000,
      }).catch(() => {});
    }
  }

  /**
   * Opens no new event stream or poll until release() (nor after close()): while the client
   * resumes the session on a WebSocket, a new one would take the session back from it.
   */
  hold() {
    if (this._held) return;
    let release;
    const promise = new Promise((resolve) => { release = resolve; });
    this._held = { promise, release };
  }

  /**
   * hold(), then a promise that resolves once no request of this link for the session's
   * frames can still be on its way to the server (where it would take the session back): none
   * in flight, an event stream the server answered, or a poll sent POLL_SETTLE_MS ago (it has
   * reached the server on any usual network; the server holds it until frames come).
   */
  settle() {
    this.hold();
    return new Promise((resolve) => {
      const check = () => {
        // Released meanwhile (the try was given up): nothing waits for the answer.
        if (!this._held || this.readyState !== 1 || this._requestSince == null || this._requestAttached) {
          resolve();
          return;
        }
        const left = this.mode === 'sse' ? 50 : this._requestSince + POLL_SETTLE_MS - Date.now();
        if (left <= 0) resolve();
        else setTimeout(check, Math.min(left, 50));
      };
      check();
    });
  }

  /** Ends hold(). */
  release() {
    const held = this._held;
    this._held = null;
    held?.release();
  }

  /** Skips the wait before reopening a broken stream. */
  retryNow() {
    clearTimeout(this._timer);
    this._wake?.();
  }

  /** Applies the session's limits (from welcome/resumed). */
  configure(session) {
    if (Number(session?.resume_grace_ms) > 0) this._graceMs = Number(session.resume_grace_ms);
    if (Number(session?.max_message_bytes) > 0) this._maxBodyBytes = Number(session.max_message_bytes);
  }

  /** Frames the server never took (for the next link of the same session); not one being POSTed. */
  takeUnsent() {
    const out = [...(this._inflight && !this._posting ? this._inflight : []), ...this._queue];
    this._inflight = null;
    this._queue = [];
    return out;
  }

  // --- open ---

  async _openSession(first) {
    let frame = null;
    try { frame = JSON.parse(first); } catch { /* the server answers invalid_message */ }
    if (this.endpoints.room && frame?.type === 'join' && !frame.room) {
      frame.room = this.endpoints.room;
      first = JSON.stringify(frame);
    }
    // A resume continues after its last_seq; a join starts at the welcome (seq 1).
    this.lastSeq = frame?.type === 'resume' ? Number(frame.last_seq) || 0 : 0;
    let res;
    try {
      res = await this._fetch(this.endpoints.open, {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: first, cache: 'no-store', signal: this._abort.signal,
      });
    } catch (err) {
      this._end(1006, `cannot open a session over HTTP: ${err.message || err}`, undefined, false, true);
      return;
    }
    const body = await readJson(res);
    if (this.readyState !== 1) return;
    if (res.ok && typeof body?.session === 'string') {
      this.token = body.session;
      this.established = true;
      this._flush();
      this._run();
      return;
    }
    if (isErrorFrame(body)) {
      // A refusal, as a socket gets it before its close.
      this._deliver(body);
      this._end(closeCodeForStatus(res.status), `${body.code} (HTTP ${res.status})`, retryAfterMs(res));
      return;
    }
    // Not the protocol's answer: a server without the HTTP transports, or a proxy's error page.
    this._end(1006, `opening a session answered HTTP ${res.status}`);
  }

  // --- server -> client ---

  /** Reads the session's frames until the link closes, reopening broken streams and polls. */
  async _run() {
    while (this.readyState === 1) {
      if (this._held) {
        await this._held.promise;
        continue;
      }
      let outcome;
      try {
        outcome = this.mode === 'sse' ? await this._streamOnce() : await this._pollOnce();
      } catch (err) {
        outcome = { retry: `${this.mode} failed: ${err.message || err}` };
      }
      this._requestSince = null;
      if (this.readyState !== 1) return;
      if (outcome.close != null) {
        this._end(outcome.close, outcome.reason, outcome.retryAfterMs);
        return;
      }
      if (outcome.retry && !(await this._pause(outcome))) return;
    }
  }

  _streamUrl(path) {
    return `${this.endpoints.root}/${path}?session=${encodeURIComponent(this.token)}&last_seq=${this.lastSeq}`;
  }

  _sendUrl() { return `${this.endpoints.root}/send?session=${encodeURIComponent(this.token)}`; }

  /** Starts a request that close() aborts: returns its AbortController. */
  _request() {
    const ctl = new AbortController();
    this._stream = ctl;
    this._requestSince = Date.now();
    this._requestAttached = false;
    return ctl;
  }

  /** One `GET /http/events`: reads it to its end. Resolves with what to do next. */
  async _streamOnce() {
    const ctl = this._request();
    // The first stream of a session always has a frame waiting (welcome or the replay): one
    // that stays silent is held back by a buffering proxy, and long-polling may get through.
    // Timed from the request: such a proxy may hold back the response's headers too, which the
    // server sends at once; so a later stream (that may stay quiet) is timed to its headers.
    const first = !this._streamed;
    let reader = null;
    let silent = false;
    const silentTimer = this._canPoll
      ? setTimeout(() => { silent = true; reader?.cancel().catch(() => {}); ctl.abort(); }, this._firstByteMs) : null;
    let res;
    try {
      res = await this._fetch(this._streamUrl('events'), { headers: { Accept: 'text/event-stream' }, cache: 'no-store', signal: ctl.signal });
    } catch (err) {
      clearTimeout(silentTimer);
      if (silent) return this._downgrade();
      return { retry: `the event stream failed: ${err.message || err}` };
    }
    if (res.status !== 200 || !res.body) {
      clearTimeout(silentTimer);
      return this._refused(res, 'the event stream');
    }
    if (!first) clearTimeout(silentTimer);
    this._requestAttached = true;
    this._recovered();
    let closeCode = null;
    const parser = new SseParser((ev) => {
      if (ev.event === 'close') closeCode = Number(ev.data);
      else if (ev.event === 'message') this._deliverText(ev.data);
    }, () => this.onalive?.());
    reader = res.body.getReader();
    const opened = Date.now();
    const decoder = new TextDecoder();
    try {
      while (closeCode == null && this.readyState === 1) {
        const { value, done } = await reader.read();
        if (done) break;
        if (!this._streamed) { this._streamed = true; clearTimeout(silentTimer); }
        this.onalive?.();
        parser.push(decoder.decode(value, { stream: true }));
      }
    } catch (err) {
      if (!silent) return { retry: `the event stream broke: ${err.message || err}` };
    } finally {
      clearTimeout(silentTimer);
      ctl.abort();
    }
    if (silent) return this._downgrade();
    // A stream that lasted or delivered counts as a success for the backoff.
    if (this._streamed && Date.now() - opened > 2000) this._stallAttempt = 0;
    if (closeCode != null) return this._closeOutcome(closeCode);
    return { retry: 'the event stream ended without a close event' };
  }

  /** A silent first event stream: poll the same session instead. */
  _downgrade() {
    this.mode = 'long-poll';
    this.implicitAcks = true;
    this.ontransport?.('long-poll');
    return {};
  }

  /** One `GET /http/poll`: delivers its frames. Resolves with what to do next. */
  async _pollOnce() {
    const ctl = this._request();
    if (this._stalledSince) this._confirmReachable();
    const timer = setTimeout(() => ctl.abort(), this._pollTimeoutMs);
    let res;
    let body;
    try {
      res = await this._fetch(this._streamUrl('poll'), { cache: 'no-store', signal: ctl.signal });
      if (res.status !== 200) return await this._refused(res, 'the poll');
      body = await readJson(res);
    } catch (err) {
      return { retry: `the poll failed: ${err.message || err}` };
    } finally {
      clearTimeout(timer);
    }
    if (!body || !Array.isArray(body.frames)) return { retry: 'the poll was not answered with frames' };
    this._recovered();
    this._stallAttempt = 0;
    this.onalive?.();
    for (const frame of body.frames) {
      if (this.readyState !== 1) return {};
      this._deliver(frame);
    }
    return body.close != null ? this._closeOutcome(Number(body.close)) : {};
  }

  /**
   * After a broken poll: the poll that replaces it is answered only once there is a frame (up to
   * the server's poll timeout), and the client holds its sends until the link is back. An empty
   * send (`[]`, which does nothing) answered 204 shows it is back at once.
   */
  async _confirmReachable() {
    try {
      const res = await this._fetch(this._sendUrl(), {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '[]', cache: 'no-store', signal: this._abort.signal,
      });
      if (res.status === 204 && this.readyState === 1) this._recovered();
    } catch { /* the poll says what went wrong */ }
  }

  _closeOutcome(code) {
    if (FINAL_CLOSE_CODES.has(code)) return { close: code, reason: `the server closed the session's ${this.mode === 'sse' ? 'stream' : 'poll'}` };
    return { retry: `the server closed the ${this.mode === 'sse' ? 'stream' : 'poll'} (${code})` };
  }

  /** A stream or poll answered other than 200: what to do next. */
  async _refused(res, what) {
    const body = await readJson(res);
    const after = retryAfterMs(res);
    if (!isErrorFrame(body)) {
      // Not the server's answer (a proxy's page): a proxy that refuses event streams may let
      // polls through.
      if (this.mode === 'sse' && !this._streamed && this._canPoll) return this._downgrade();
      return { retry: `${what} answered HTTP ${res.status}` };
    }
    if (res.status === 429 || res.status === 503) return { retry: `${what}: ${body.code}`, delayMs: after ?? 1000 };
    // The session is gone (410), or a refusal that retrying cannot fix.
    this._deliver(body);
    return { close: closeCodeForStatus(res.status), reason: `${what}: ${body.code} (HTTP ${res.status})` };
  }

  /** Waits before reopening; false when the link closed meanwhile or the grace period is over. */
  async _pause({ retry, delayMs }) {
    const now = Date.now();
    if (!this._stalledSince) this._stalledSince = now;
    if (now - this._stalledSince > this._graceMs) {
      this._end(1006, `${retry}; not back within the resume grace period`);
      return false;
    }
    this._stallAttempt += 1;
    if (this._stallAttempt > this._maxReopenAttempts) {
      this._end(1006, `${retry}; gave up after ${this._stallAttempt - 1} attempts`, undefined, true);
      return false;
    }
    const delay = delayMs ?? this._reopenDelayMs(this._stallAttempt);
    this.onstall?.({ message: retry, attempt: this._stallAttempt, retryInMs: delay });
    await new Promise((resolve) => {
      this._wake = resolve;
      this._timer = setTimeout(resolve, delay);
    });
    this._wake = null;
    return this.readyState === 1;
  }

  _recovered() {
    if (!this._stalledSince) return;
    this._stalledSince = 0;
    this.onrecover?.();
  }

  _deliverText(text) {
    let frame;
    try { frame = JSON.parse(text); } catch { this.onmessage?.({ data: text }); return; }
    this._deliver(frame);
  }

  _deliver(frame) {
    const seq = Number(frame?.seq);
    if (Number.isFinite(seq) && seq > this.lastSeq) this.lastSeq = seq;
    this.onmessage?.({ data: frame });
  }

  // --- client -> server ---

  /** POSTs queued frames in order, one request at a time, as many as fit in each. */
  async _flush() {
    if (this._sending || !this.token) return;
    this._sending = true;
    try {
      while (this.readyState === 1 && this._queue.length) {
        this._inflight = this._takeBatch();
        if (!(await this._post(this._inflight))) return;
        this._inflight = null;
      }
    } finally {
      this._sending = false;
    }
  }

  _takeBatch() {
    let bytes = 2;
    let n = 0;
    while (n < this._queue.length && n < MAX_BATCH_FRAMES) {
      bytes += this._queue[n].length + 1;
      if (n > 0 && bytes > this._maxBodyBytes) break;
      n += 1;
    }
    return this._queue.splice(0, n);
  }

  /**
   * POSTs one batch until the server takes it: retries after Retry-After on 429/503 and after a
   * backoff on network errors; a batch refused as invalid or too large is sent frame by frame
   * (the bad frame's error goes to the client, the others through). False when the link ended.
   */
  async _post(batch) {
    for (let attempt = 1; this.readyState === 1; attempt += 1) {
      const body = batch.length === 1 ? batch[0] : `[${batch.join(',')}]`;
      let res = null;
      this._posting = true;
      // A POST nobody answers (a hung proxy, a frozen server) would hold every later send:
      // given up after sendTimeoutMs and sent again, as after a network error (its numbered
      // frames the server took already are dropped there).
      const ctl = new AbortController();
      const timer = setTimeout(() => ctl.abort(), this._sendTimeoutMs);
      try {
        res = await this._fetch(this._sendUrl(), { method: 'POST', headers: { 'Content-Type': 'application/json' }, body, cache: 'no-store', signal: ctl.signal });
      } catch { /* network error: retry */ } finally {
        clearTimeout(timer);
        this._posting = false;
      }
      if (res?.ok) return true;
      if (res && (res.status === 400 || res.status === 413)) return this._refusedBatch(batch, res);
      if (res?.status === 410) {
        const frame = await readJson(res);
        if (this.readyState !== 1) return false;
        if (isErrorFrame(frame)) this._deliver(frame);
        this._end(1008, `sending: the session is gone (${frame?.code || 'HTTP 410'})`);
        return false;
      }
      const wait = res && (res.status === 429 || res.status === 503)
        ? retryAfterMs(res) ?? 1000
        : Math.min(4000, 250 * 2 ** (attempt - 1));
      await new Promise((resolve) => { setTimeout(resolve, wait); });
    }
    return false;
  }

  async _refusedBatch(batch, res) {
    if (batch.length > 1) {
      for (const one of batch) {
        if (!(await this._post([one]))) return false;
      }
      return true;
    }
    const frame = await readJson(res);
    if (isErrorFrame(frame) && this.readyState === 1) this._deliver(frame);
    return true; // the frame is dropped, as a socket drops what it refuses
  }

  // --- end ---

  _stop() {
    clearTimeout(this._timer);
    this._wake?.();
    this._abort.abort();
    this._stream?.abort();
  }

  /**
   * The link ends on its own (server close, refusal, gave up): reports it as a socket close;
   * `gaveUp` when it spent its reopen attempts (the client then gives up too).
   */
  _end(code, reason, retryAfter, gaveUp = false, unreachable = false) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.release();
    this._stop();
    this.onclose?.({ code, reason, wasClean: code !== 1006, established: this.established, retryAfterMs: retryAfter, gaveUp, unreachable });
  }
}
