// webrtc-room.js: a mesh of RTCPeerConnections, one per other peer of a signaling room.
//
// Built on SignalingClient (signaling-client.js). For every remote peer it runs "perfect
// negotiation" (the W3C/MDN pattern: makingOffer / ignoreOffer / implicit rollback) with the
// politeness the server assigned to the pair, trickles ICE candidates both ways (candidates that
// arrive before the remote description are queued), restarts ICE when the connection fails,
// applies fresh ICE servers from the server (new TURN credentials, or a move of the room to
// another relay: see `relayMoved`), and can force relay-only (TURN) transport.
//
//   import { WebRTCRoom } from './webrtc-room.js';
//   const room = new WebRTCRoom('wss://example.org/ws', { room: 'demo', name: 'Ada', localStream });
//   room.addEventListener('message', (e) => console.log(e.detail.peer.name, e.detail.label, e.detail.data));
//   room.addEventListener('track', (e) => attach(e.detail.peer.id, e.detail.stream));
//   await room.join();
//   room.send('chat', 'hello everyone');
//
// Data channels: every peer opens its own in-band channels (default labels `chat`: reliable,
// ordered, UTF-8 text; `canvas`: reliable, unordered; `cursor`: unordered, no retransmits) and
// also accepts the ones the other side opens, so it interoperates with peers that open
// channels on one side only. A message is sent on one open channel with the label and
// received from all of them. `chat` is the only ordered channel, so a peer that tells channels
// apart by their `ordered` flag (the Rust `peer` SDK) finds it; channels labelled `reliable` /
// `unreliable` (the SDK's own) are understood as `chat` / ignored (see `channelAliases`).
//
// Room events (CustomEvent, payload in `event.detail`):
//   peer          { peer }                 a RemotePeer was created (it starts connecting)
//   peer-removed  { peer, reason }
//   peer-state    { peer, state }          'connecting'|'connected'|'reconnecting'|'unreachable'|'closed'
//   channel-open  { peer, label }
//   message       { peer, label, data }
//   track         { peer, track, stream }
//   ice-restart   { peer, reason }         an ICE restart towards a peer began (reason 'relay moved':
//                                          the room's relay changed under a relayed pair)
//   turn-error    { peer, url, code, text } a TURN server answered an Allocate with an error
//                                          (401: refused credentials), once per URL and code
//   signaling     { state, ... }           the SignalingClient's state events, forwarded
//   log           { level, message }       level 'debug' (every signal, verbose) | 'info' | 'warn'

import { CLIENT_RULES, SignalingClient } from './signaling-client.js';

export const DEFAULT_CHANNELS = Object.freeze([
  { label: 'chat', init: { ordered: true } },
  { label: 'canvas', init: { ordered: false } },
  { label: 'cursor', init: { ordered: false, maxRetransmits: 0 } },
]);

/** The TURN URLs (`turn:`, `turns:`) of RTCIceServer objects: sorted, without duplicates. */
export function turnUrls(iceServers) {
  const urls = new Set();
  for (const server of iceServers || []) {
    for (const url of [].concat(server.urls || [])) {
      if (/^turns?:/i.test(url)) urls.add(url);
    }
  }
  return [...urls].sort();
}

/**
 * The server a `turn:`/`turns:` URL names (RFC 7065: `turn[s]:HOST[:PORT][?transport=T]`):
 * `{ host, port }` (host without IPv6 brackets, lower case; port defaulting to 3478 / 5349),
 * or null for anything else.
 */
export function turnServer(url) {
  const m = /^(turns?):(?:\[([^\]]+)\]|([^:?[\]]+))(?::(\d+))?(?:\?.*)?$/i.exec(String(url || ''));
  if (!m) return null;
  const port = m[4] ? Number(m[4]) : m[1].toLowerCase() === 'turns' ? 5349 : 3478;
  if (!(port > 0 && port < 65536)) return null;
  return { host: (m[2] || m[3]).toLowerCase(), port };
}

/** `HOST:PORT` of a TURN URL (IPv6 in brackets), or null. */
export function turnServerAddress(url) {
  const s = turnServer(url);
  if (!s) return null;
  return s.host.includes(':') ? `[${s.host}]:${s.port}` : `${s.host}:${s.port}`;
}

/** Whether two lists hold the same URLs (order and duplicates aside). */
function sameUrls(a, b) {
  const x = new Set(a || []);
  const y = new Set(b || []);
  return x.size === y.size && [...x].every((url) => y.has(url));
}

/**
 * Whether a connection restarts ICE when the TURN URLs change from `before` to `after` (both as
 * `turnUrls`), the rule of docs/protocol.md (`ice_servers`):
 * - same URLs (a credential refresh): no (see `applyFreshIceServers` for what happens then);
 * - the selected pair's local candidate is relayed (`localType` 'relay'): yes when its TURN
 *   server (`relayUrl`, the candidate stats' `url`; compared by host:port) is not named by any
 *   URL of `after`, or is unknown;
 * - a direct local candidate (host, srflx, prflx): no;
 * - no selected pair: yes only if the connection had connected and lost its path (`pathLost`:
 *   its restarts so far gathered on the old servers, likely the relay that went away).
 */
export function relayMoved(before, after, localType, relayUrl, pathLost = false) {
  if (sameUrls(before, after)) return false;
  if (!localType) return !!pathLost;
  if (localType !== 'relay') return false;
  return relayListed(after, relayUrl) !== true;
}

/**
 * Whether the TURN server of `relayUrl` (host:port) is named by one of `urls`; null when
 * `relayUrl` is not a TURN URL (unknown server).
 */
export function relayListed(urls, relayUrl) {
  const server = turnServer(relayUrl);
  if (!server) return null;
  return (urls || []).some((url) => {
    const listed = turnServer(url);
    return !!listed && listed.port === server.port && listed.host === server.host;
  });
}

/** How long after a 'relay moved' restart the selected pair is checked again (see _relayFollowUpCheck). */
const RELAY_FOLLOW_UP_MS = 2000;

const ROOM_DEFAULTS = Object.freeze({
  room: undefined,
  name: undefined,
  token: undefined,
  /** Force TURN: iceTransportPolicy 'relay'. Can be changed later with setRelayOnly(). */
  relayOnly: false,
  /** A MediaStream whose tracks are sent to every peer (null: receive only). */
  localStream: null,
  channels: DEFAULT_CHANNELS,
  /** Incoming channels with these labels count as the mapped label (null: ignore them). */
  channelAliases: { reliable: 'chat', unreliable: null },
  /** Extra RTCConfiguration fields (iceServers come from the signaling server). */
  rtcConfig: {},
  /** Restart ICE when a connection stays 'disconnected' this long ('failed' restarts at once). */
  iceRestartDelayMs: 2500,
  /** A peer not connected within this time is reported 'unreachable' (retries continue). */
  unreachableAfterMs: 20000,
  /** The polite side waits this long for the other side's first offer before offering itself. */
  politeOfferWaitMs: 1500,
  /** A connection still not connected this long after it started gets an ICE restart. */
  connectWatchdogMs: 8000,
  /** Report each connection to the server (`stats`) this often, and when its selected pair changes (0: never). */
  statsEveryMs: CLIENT_RULES.stats.everyMs,
  /**
   * Leave the room when the page goes away (`pagehide`: closed, reloaded, navigated from), so
   * the others see it leave at once instead of after the server's resume grace period.
   */
  leaveOnPageHide: true,
  /** Options passed to SignalingClient. */
  signaling: {},
});

export class WebRTCRoom extends EventTarget {
  /**
   * @param {string|SignalingClient} signaling  the signaling WebSocket URL, or a client to use
   * @param {object} [options]  see ROOM_DEFAULTS above
   */
  constructor(signaling, options = {}) {
    super();
    this.options = { ...ROOM_DEFAULTS, ...options };
    this.client = typeof signaling === 'string'
      ? new SignalingClient(signaling, {
        room: this.options.room, name: this.options.name, token: this.options.token, ...this.options.signaling,
      })
      : signaling;
    this.relayOnly = !!this.options.relayOnly;
    this.localStream = this.options.localStream;
    /** @type {Map<string, RemotePeer>} */
    this.peers = new Map();
    this._wire();
  }

  get peerId() { return this.client.peerId; }

  /**
   * Joins the room; resolves with the signaling session (peer id, peers, ICE servers). After
   * leave() it rejects (the client is closed for good): a left room does not come back.
   */
  join() {
    if (this.options.leaveOnPageHide && !this._onPageHide && typeof globalThis.addEventListener === 'function') {
      this._onPageHide = () => this.leave();
      globalThis.addEventListener('pagehide', this._onPageHide);
    }
    return this.client.connect();
  }

  /** Leaves the room: closes every peer connection and the signaling session. */
  leave() {
    if (this._onPageHide) globalThis.removeEventListener('pagehide', this._onPageHide);
    for (const peer of [...this.peers.values()]) this._removePeer(peer.id, 'left');
    this.client.leave();
  }

  /**
   * Sends `data` on the channel `label` to one peer (`to`) or to every peer.
   * Returns how many peers it was sent to (peers whose channel is not open yet are skipped).
   */
  send(label, data, to) {
    let sent = 0;
    for (const peer of this.peers.values()) {
      if (to && peer.id !== to) continue;
      if (peer.send(label, data)) sent += 1;
    }
    return sent;
  }

  /**
   * Replaces the local media: tracks of a kind already sent are replaced, new kinds added, and
   * kinds the stream lacks (all for null) are no longer sent.
   */
  async setLocalStream(stream) {
    this.localStream = stream;
    await Promise.all([...this.peers.values()].map((p) => p.setLocalStream(stream)));
  }

  /**
   * Switches every connection to relay-only (TURN) or back. An ICE restart is not enough:
   * Chromium keeps a working selected pair and never checks the new relay pairs, so each
   * connection is made anew (`RemotePeer.rebuild`); closing the old one releases its TURN
   * allocations. The other side sees an offer with a new DTLS fingerprint and rebuilds too.
   */
  setRelayOnly(on) {
    this.relayOnly = !!on;
    for (const peer of this.peers.values()) peer.rebuild(on ? 'relay-only on' : 'relay-only off', true);
  }

  /** The RTCConfiguration for new and existing connections. */
  rtcConfiguration() {
    return {
      ...this.options.rtcConfig,
      iceServers: this.client.iceServers.map((s) => ({ ...s })),
      iceTransportPolicy: this.relayOnly ? 'relay' : 'all',
    };
  }

  _wire() {
    const c = this.client;
    c.addEventListener('state', (e) => {
      // A client closed or failed for good has nothing to leave on pagehide.
      if ((e.detail.state === 'closed' || e.detail.state === 'failed') && this._onPageHide) {
        globalThis.removeEventListener('pagehide', this._onPageHide);
      }
      this._emit('signaling', e.detail);
    });
    c.addEventListener('welcome', (e) => {
      for (const info of e.detail.session.peers || []) this._addPeer(info);
    });
    c.addEventListener('session-reset', (e) => {
      // Our peer id is about to change: every connection was negotiated under the old one.
      for (const peer of [...this.peers.values()]) this._removePeer(peer.id, `session reset (${e.detail.reason})`);
    });
    c.addEventListener('peer-joined', (e) => this._addPeer(e.detail.peer));
    c.addEventListener('peer-left', (e) => this._removePeer(e.detail.peerId, e.detail.reason));
    c.addEventListener('signal', (e) => {
      const { from, signal } = e.detail;
      let peer = this.peers.get(from);
      if (!peer) {
        // The server announces peers before forwarding their signals; be lenient anyway.
        peer = this._addPeer(c.peers.get(from) || { id: from, polite: true });
      }
      peer.receiveSignal(signal);
    });
    c.addEventListener('ice-servers', () => {
      for (const peer of this.peers.values()) peer.applyFreshIceServers();
    });
    c.addEventListener('error', (e) => this._log('warn', `signaling error ${e.detail.code}: ${e.detail.message}`));
  }

  _addPeer(info) {
    const existing = this.peers.get(info.id);
    if (existing) return existing;
    const peer = new RemotePeer(this, info);
    this.peers.set(info.id, peer);
    this._emit('peer', { peer });
    peer.start();
    return peer;
  }

  _removePeer(id, reason) {
    const peer = this.peers.get(id);
    if (!peer) return;
    this.peers.delete(id);
    peer.close();
    this._emit('peer-removed', { peer, reason });
  }

  _emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }

  _log(level, message) { this._emit('log', { level, message }); }
}

const CANDIDATE_TYPES = new Set(['host', 'srflx', 'prflx', 'relay']);
const RELAY_PROTOCOLS = new Set(['udp', 'tcp', 'tls']);

/** A `stats` message's report (docs/protocol.md) from a connectionInfo() snapshot. */
export function statsReport(info) {
  const known = CANDIDATE_TYPES.has(info.localType) && CANDIDATE_TYPES.has(info.remoteType)
    && (info.protocol === 'udp' || info.protocol === 'tcp');
  const pair = known ? { local: info.localType, remote: info.remoteType, protocol: info.protocol } : null;
  if (pair && info.localType === 'relay') {
    if (RELAY_PROTOCOLS.has(info.relayProtocol)) pair.relay_protocol = info.relayProtocol;
    if (/^turns?:/.test(info.relayUrl || '') && info.relayUrl.length <= 256) pair.relay_url = info.relayUrl;
  }
  const report = { pair, bytes_sent: Math.max(0, Math.floor(info.bytesSent || 0)), bytes_received: Math.max(0, Math.floor(info.bytesReceived || 0)) };
  if (info.rttMs != null && info.rttMs >= 0) report.rtt_ms = Math.min(600000, Math.round(info.rttMs));
  return report;
}

/** The DTLS fingerprint of a session description (a new one means a new connection). */
function fingerprint(sdp) {
  return /a=fingerprint:(\S+ \S+)/.exec(sdp || '')?.[1] ?? null;
}

/** One remote peer: its RTCPeerConnection, negotiation state and data channels. */
export class RemotePeer {
  constructor(room, info) {
    this.room = room;
    this.id = info.id;
    this.name = info.name || info.id;
    /** Whether *we* are the polite side towards this peer (from the server). */
    this.polite = !!info.polite;
    /** 'connecting'|'connected'|'reconnecting'|'unreachable'|'closed' */
    this.state = 'connecting';
    this.remoteStream = null;
    /** ICE restarts since the connection was last connected (drives the retry backoff). */
    this.iceRestarts = 0;
    /** ICE restarts because the room's relay moved away from under this connection (never reset). */
    this.relayMoves = 0;
    /** The TURN URLs of the configuration in effect (`turnUrls`). */
    this.turnUrls = [];
    this.connectedAt = 0;
    this.createdAt = Date.now();
    /** @type {RTCDataChannel[]} */
    this.channels = [];
    this._makingOffer = false;
    this._ignoreOffer = false;
    this._settingRemoteAnswerPending = false;
    this._pendingCandidates = [];
    this._signalChain = Promise.resolve();
    this._restartPending = false;
    this._checkingCredentials = false;
    /**
     * Fresh TURN credentials (same URLs) arrived and no ICE restart of ours has gathered with
     * them yet: a relayed path is still on an allocation made with older ones.
     */
    this._freshCredentialsOwed = false;
    this._timers = new Set();
    /** TURN errors already reported (`URL CODE`): each once per connection. */
    this._turnErrors = new Set();
    this.pc = null;
  }

  start() {
    const config = this.room.rtcConfiguration();
    const pc = new RTCPeerConnection(config);
    this.pc = pc;
    this.turnUrls = turnUrls(config.iceServers);
    this._freshCredentialsOwed = false;
    pc.onnegotiationneeded = () => this._negotiate();
    pc.onicecandidate = ({ candidate }) => {
      if (candidate && candidate.candidate) {
        this._signal({ kind: 'candidate', candidate: candidate.toJSON() });
      } else {
        const ufrag = /a=ice-ufrag:(\S+)/.exec(pc.localDescription?.sdp || '')?.[1];
        this._signal(ufrag ? { kind: 'end_of_candidates', username_fragment: ufrag } : { kind: 'end_of_candidates' });
      }
    };
    // A TURN server that refuses the credentials or errs on the Allocate: the one reason a
    // relay-only connection never connects that nothing else shows. STUN/TURN error codes
    // (300-699) only; the browser's own 701 (a server it could not reach from one of its
    // interfaces) is common and harmless.
    pc.onicecandidateerror = (ev) => {
      if (!/^turns?:/.test(ev.url || '') || ev.errorCode < 300 || ev.errorCode > 699) return;
      const key = `${ev.url} ${ev.errorCode}`;
      if (this._turnErrors.has(key)) return;
      this._turnErrors.add(key);
      this.room._log('warn', `TURN ${ev.url}: ${ev.errorCode} ${ev.errorText}`);
      this.room._emit('turn-error', { peer: this, url: ev.url, code: ev.errorCode, text: ev.errorText });
    };
    pc.oniceconnectionstatechange = () => this._onIceState();
    pc.onconnectionstatechange = () => this._onIceState();
    pc.ontrack = ({ track, streams }) => {
      let stream = streams[0];
      if (!stream) {
        this.remoteStream ||= new MediaStream();
        this.remoteStream.addTrack(track);
        stream = this.remoteStream;
      }
      this.remoteStream = stream;
      this.room._emit('track', { peer: this, track, stream });
    };
    pc.ondatachannel = ({ channel }) => this._wireChannel(channel, false);
    const stream = this.room.localStream;
    if (stream) for (const track of stream.getTracks()) pc.addTrack(track, stream);
    for (const def of this.room.options.channels) this._wireChannel(pc.createDataChannel(def.label, def.init), true);
    this._notConnectedSince = Date.now();
    this._nextRestartAt = Date.now() + this.room.options.connectWatchdogMs + (this.polite ? 3000 : 0);
    this._watchdog = setInterval(() => this._watch(), 1000);
  }

  /** Sends on an open channel with this label; false when none is open. */
  send(label, data) {
    const open = this.channels.filter((c) => c._label === label && c.readyState === 'open');
    const dc = open.find((c) => c._own) || open[0];
    if (!dc) return false;
    try {
      dc.send(data);
      return true;
    } catch (err) {
      this.room._log('warn', `send on ${label} to ${this.name} failed: ${err.message}`);
      return false;
    }
  }

  isOpen(label) { return this.channels.some((c) => c._label === label && c.readyState === 'open'); }

  /** Restarts ICE (a new offer with fresh credentials); perfect negotiation resolves glare. */
  restartIce(reason) {
    if (!this.pc || this.pc.connectionState === 'closed') return;
    this.room._log('info', `ICE restart towards ${this.name}: ${reason}`);
    this._restartPending = true;
    // The restart gathers with the configuration in effect.
    this._freshCredentialsOwed = false;
    this.iceRestarts += 1;
    this.pc.restartIce();
    this.room._emit('ice-restart', { peer: this, reason });
  }

  applyConfiguration() {
    if (!this.pc || this.pc.signalingState === 'closed') return;
    const config = this.room.rtcConfiguration();
    try {
      this.pc.setConfiguration(config);
      this.turnUrls = turnUrls(config.iceServers);
    } catch (err) {
      this.room._log('warn', `setConfiguration failed: ${err.message}`);
    }
  }

  /**
   * Fresh ICE servers arrived (`ice_servers`, or after welcome/resumed); they are applied at
   * once (new allocations use them).
   *
   * Same TURN URLs: new TURN credentials. An established path whose local candidate is
   * relayed is moved onto fresh allocations with an ICE restart (on either side: each side's
   * allocations are its own), since the old credentials stop refreshing the old allocations
   * once their secret is rotated out (and, on relays that check the expiry of every refresh,
   * once they expire).
   *
   * Other TURN URLs: the room moved to another relay (its relay died or drains). A connection
   * whose selected pair is relayed through a TURN server no longer listed restarts ICE at once
   * ('relay moved', counted in `relayMoves`); direct pairs are left alone (`relayMoved`).
   */
  async applyFreshIceServers() {
    const before = this.turnUrls;
    this.applyConfiguration();
    const after = this.turnUrls;
    if (!this.pc || this.state === 'closed') return;
    if (sameUrls(before, after)) {
      this._freshCredentialsOwed = after.length > 0;
      await this._moveOntoFreshCredentials();
      return;
    }
    const info = await this.connectionInfo().catch(() => null);
    const pathLost = this.connectedAt > 0 && this.state !== 'connected';
    const restart = relayMoved(before, after, info?.localType ?? null, info?.relayUrl ?? null, pathLost);
    this.room._log('info', `TURN servers changed for ${this.name} (${before.join(' ') || 'none'} -> ${after.join(' ') || 'none'}); `
      + `selected local candidate ${info?.localType ?? 'none'}${info?.relayUrl ? ` via ${info.relayUrl}` : ''}: ${restart ? 'restarting ICE' : 'left alone'}`);
    if (!restart || this.state === 'closed') return;
    this.relayMoves += 1;
    this.restartIce('relay moved');
    // Give the restart time before the watchdog's own retries (which would interrupt it).
    this._nextRestartAt = Math.max(this._nextRestartAt, Date.now() + this.room.options.iceRestartDelayMs);
    this._relayFollowUp = { at: Date.now() + RELAY_FOLLOW_UP_MS, left: 2 };
  }

  /**
   * Fresh credentials not gathered with yet (`_freshCredentialsOwed`): a connected path whose
   * local candidate is relayed restarts ICE onto them. A connection that is not connected (or
   * in the middle of a negotiation) when they arrive does so once it is (from the watchdog): it
   * may come back on an allocation made with the old ones.
   */
  async _moveOntoFreshCredentials() {
    const pc = this.pc;
    if (!pc || !this._freshCredentialsOwed || this._checkingCredentials || this.state !== 'connected'
      || pc.signalingState !== 'stable' || this._makingOffer) return;
    this._checkingCredentials = true;
    const info = await this.connectionInfo().catch(() => null);
    this._checkingCredentials = false;
    if (!this._freshCredentialsOwed || this.state !== 'connected') return;
    if (info && info.localType === 'relay') this.restartIce('fresh TURN credentials');
  }

  /**
   * After a 'relay moved' restart, Chromium on the controlled side of the new ICE session (the
   * side whose restart offer lost the glare) keeps its old selected pair while it still works:
   * through a draining relay, until the relay exits. If the selected pair still goes through a
   * TURN server that is no longer listed, restart again (at most twice): this side's offer then
   * makes it the controlling agent, which selects the new pair.
   */
  async _relayFollowUpCheck(followUp) {
    followUp.busy = true;
    const info = await this.connectionInfo().catch(() => null);
    followUp.busy = false;
    if (this._relayFollowUp !== followUp || this.state !== 'connected') return;
    const stale = info?.localType === 'relay' && relayListed(this.turnUrls, info.relayUrl) === false;
    if (!stale || followUp.left <= 0) {
      this._relayFollowUp = null;
      return;
    }
    followUp.left -= 1;
    followUp.at = Date.now() + RELAY_FOLLOW_UP_MS;
    this.restartIce(`relay moved: still on ${info.relayServer || 'the old relay'}`);
  }

  /**
   * Sends the tracks of `stream` (null: none). A kind the stream lacks stops: its sender gets no
   * track and its direction no longer sends, so the other side's track is muted (it shows a
   * placeholder, not a frozen or black picture). Such a paused sender is used again when the
   * kind comes back, instead of a new m-section on every camera toggle.
   */
  async setLocalStream(stream) {
    const pc = this.pc;
    if (!pc || pc.signalingState === 'closed') return;
    // This connection's paused senders (a rebuild during the awaits below starts a new set).
    const pausedSenders = (this._paused ||= new Set());
    const tracks = stream ? stream.getTracks() : [];
    for (const track of tracks) {
      const sender = pc.getSenders().find((s) => s.track?.kind === track.kind);
      const paused = !sender && pc.getTransceivers().find((t) => pausedSenders.has(t.sender) && t.currentDirection !== 'stopped' && t.receiver.track.kind === track.kind);
      if (sender) {
        await sender.replaceTrack(track);
      } else if (paused) {
        pausedSenders.delete(paused.sender);
        await paused.sender.replaceTrack(track);
        paused.direction = paused.direction === 'inactive' ? 'sendonly' : 'sendrecv';
      } else {
        pc.addTrack(track, stream);
      }
    }
    const kinds = new Set(tracks.map((t) => t.kind));
    for (const t of pc.getTransceivers()) {
      if (!t.sender.track || kinds.has(t.sender.track.kind) || t.currentDirection === 'stopped') continue;
      await t.sender.replaceTrack(null);
      if (pc.signalingState === 'closed') return;
      t.direction = t.direction === 'sendonly' ? 'inactive' : 'recvonly';
      pausedSenders.add(t.sender);
    }
  }

  /**
   * A snapshot of the selected candidate pair and media counters from getStats():
   * { localType, remoteType, protocol, relayProtocol, relayUrl, relayServer, localAddress,
   *   remoteAddress, rttMs, bytesSent, bytesReceived, framesDecoded, frameWidth, frameHeight }
   * `relayUrl` / `relayServer`: for a relayed local candidate, the TURN URL it was allocated
   * through (RTCIceCandidateStats.url, e.g. `turn:192.0.2.1:3478?transport=udp`) and its
   * `HOST:PORT`; null otherwise.
   */
  async connectionInfo() {
    const pc = this.pc;
    if (!pc) return null;
    const stats = await pc.getStats();
    let pair = null;
    stats.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId) || pair;
    });
    if (!pair) stats.forEach((s) => { if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
    const info = { localType: null, remoteType: null, framesDecoded: 0, frameWidth: 0, frameHeight: 0 };
    if (pair) {
      const local = stats.get(pair.localCandidateId) || {};
      const remote = stats.get(pair.remoteCandidateId) || {};
      Object.assign(info, {
        localType: local.candidateType ?? null,
        remoteType: remote.candidateType ?? null,
        protocol: local.protocol ?? null,
        relayProtocol: local.relayProtocol ?? null,
        relayUrl: local.candidateType === 'relay' ? local.url ?? null : null,
        relayServer: local.candidateType === 'relay' ? turnServerAddress(local.url) : null,
        localAddress: local.address != null ? `${local.address}:${local.port}` : null,
        remoteAddress: remote.address != null ? `${remote.address}:${remote.port}` : null,
        rttMs: pair.currentRoundTripTime != null ? Math.round(pair.currentRoundTripTime * 10000) / 10 : null,
        bytesSent: pair.bytesSent ?? 0,
        bytesReceived: pair.bytesReceived ?? 0,
      });
    }
    stats.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') {
        info.framesDecoded += s.framesDecoded || 0;
        info.frameWidth = Math.max(info.frameWidth, s.frameWidth || 0);
        info.frameHeight = Math.max(info.frameHeight, s.frameHeight || 0);
      }
    });
    return info;
  }

  /**
   * Replaces the RTCPeerConnection with a new one under the room's current configuration
   * (new ICE and DTLS sessions, new channels); `offer`: make the first offer at once.
   */
  rebuild(reason, offer = false) {
    if (!this.pc || this.state === 'closed') return;
    this.room._log('info', `new connection to ${this.name}: ${reason}`);
    this.room._emit('ice-restart', { peer: this, reason });
    clearInterval(this._watchdog);
    for (const t of this._timers) clearTimeout(t);
    this._timers.clear();
    for (const dc of this.channels) { try { dc.close(); } catch { /* ignore */ } }
    this.channels = [];
    try { this.pc.close(); } catch { /* ignore */ }
    this.pc = null;
    this._makingOffer = false;
    this._ignoreOffer = false;
    this._settingRemoteAnswerPending = false;
    this._pendingCandidates = [];
    this._offerWaitTimer = null;
    this._offerWaitOver = offer;
    this._relayFollowUp = null;
    this._paused = null; // senders of the old connection
    this.remoteStream = null;
    this.iceRestarts = 0;
    this.connectedAt = 0;
    if (this.state === 'connected') this._setState('reconnecting');
    this.start();
  }

  close() {
    clearInterval(this._watchdog);
    for (const t of this._timers) clearTimeout(t);
    this._timers.clear();
    for (const dc of this.channels) { try { dc.close(); } catch { /* ignore */ } }
    this.channels = [];
    if (this.pc) { try { this.pc.close(); } catch { /* ignore */ } }
    this._setState('closed');
  }

  // --- negotiation ---

  async _negotiate(force = false) {
    const pc = this.pc;
    if (!pc || pc.signalingState === 'closed') return;
    if (!force && this.polite && !pc.currentRemoteDescription && !this._offerWaitOver) {
      // The polite side lets the impolite one make the first offer: glare at the very first
      // negotiation is legal (perfect negotiation resolves it) but it makes Chromium roll back
      // an offer whose transports were just created, which sometimes leaves ICE gathering or
      // the data channel m-section stuck. If no offer comes in time, offer ourselves (the other
      // side may be a client that only answers). Once an offer arrived and was answered, the
      // browser fires negotiationneeded again if anything of ours is still unnegotiated.
      this._offerWaitTimer ||= this._after(this.room.options.politeOfferWaitMs, () => {
        this._offerWaitOver = true;
        if (!pc.currentRemoteDescription && pc.signalingState === 'stable') this._negotiate(true);
      });
      return;
    }
    try {
      this._makingOffer = true;
      this.room._log('debug', `negotiationneeded for ${this.name}: ${pc.getTransceivers().map((t) => `${t.mid}:${t.receiver.track.kind}:${t.direction}/${t.currentDirection}:${t.sender.track ? 'track' : '-'}`).join(' ')} sctp=${pc.sctp ? pc.sctp.state : '-'}`);
      await pc.setLocalDescription();
      if (pc.signalingState !== 'have-local-offer') return;
      const offer = { kind: 'offer', sdp: pc.localDescription.sdp };
      if (this._restartPending) offer.ice_restart = true;
      this._restartPending = false;
      this._signal(offer);
    } catch (err) {
      this.room._log('warn', `creating an offer for ${this.name} failed: ${err.message}`);
    } finally {
      this._makingOffer = false;
    }
  }

  /** Queues an incoming signal; signals of one peer are handled one at a time, in order. */
  receiveSignal(signal) {
    this._signalChain = this._signalChain
      .then(() => this._handleSignal(signal))
      .catch((err) => this.room._log('warn', `signal ${signal?.kind} from ${this.name}: ${err.message}`));
    return this._signalChain;
  }

  async _handleSignal(signal) {
    const pc = this.pc;
    if (!pc || pc.signalingState === 'closed') return;
    this.room._log('debug', `<- ${signal.kind} from ${this.name} (${pc.signalingState}${this._makingOffer ? ', making offer' : ''})`);
    switch (signal.kind) {
      case 'offer':
      case 'answer': {
        const description = { type: signal.kind, sdp: signal.sdp };
        if (description.type === 'offer' && pc.currentRemoteDescription && fingerprint(signal.sdp) !== fingerprint(pc.currentRemoteDescription.sdp)) {
          // The other side made a new connection (e.g. it switched "relay only"): so do we.
          this.rebuild('the other side made a new connection');
          return this._handleSignal(signal);
        }
        const readyForOffer = !this._makingOffer && (pc.signalingState === 'stable' || this._settingRemoteAnswerPending);
        const offerCollision = description.type === 'offer' && !readyForOffer;
        this._ignoreOffer = !this.polite && offerCollision;
        if (this._ignoreOffer) {
          this.room._log('info', `glare with ${this.name}: ignoring its offer (we are impolite)`);
          return;
        }
        if (description.type === 'answer' && pc.signalingState !== 'have-local-offer') {
          this.room._log('info', `stale answer from ${this.name} ignored (${pc.signalingState})`);
          return;
        }
        this._settingRemoteAnswerPending = description.type === 'answer';
        try {
          await pc.setRemoteDescription(description); // rolls back our own offer if needed
        } finally {
          this._settingRemoteAnswerPending = false;
        }
        await this._flushCandidates();
        if (description.type === 'offer') {
          await pc.setLocalDescription();
          this._signal({ kind: 'answer', sdp: pc.localDescription.sdp });
        }
        break;
      }
      case 'candidate': {
        if (!pc.remoteDescription) {
          this._pendingCandidates.push(signal.candidate);
          return;
        }
        await this._addCandidate(signal.candidate);
        break;
      }
      case 'end_of_candidates':
        // Chromium needs no end-of-candidates to complete ICE; nothing to do.
        break;
      default:
        this.room._log('warn', `unknown signal kind ${signal.kind} from ${this.name}`);
    }
  }

  async _addCandidate(candidate) {
    try {
      await this.pc.addIceCandidate(this._bundledCandidate(candidate));
    } catch (err) {
      // Candidates of an offer we ignored, or of an older ICE generation, are expected to fail.
      if (!this._ignoreOffer) this.room._log('info', `candidate from ${this.name} not added: ${err.message}`);
    }
  }

  /**
   * Some peers do not know which m-section their candidate belongs to: an empty sdpMid, or
   * index 0 pointing at an m-section they rejected (the candidate is then silently dropped).
   * With BUNDLE every bundled m-section shares one transport, so a candidate whose mid is not
   * in the bundle group belongs to the group's transport: give it the group's tag.
   */
  _bundledCandidate(candidate) {
    const group = /a=group:BUNDLE ([^\r\n]+)/.exec(this.pc.remoteDescription?.sdp || '')?.[1]?.trim().split(/\s+/);
    if (!group?.length || !candidate?.candidate) return candidate;
    if (candidate.sdpMid != null && group.includes(candidate.sdpMid)) return candidate;
    return { candidate: candidate.candidate, sdpMid: group[0], usernameFragment: candidate.usernameFragment ?? undefined };
  }

  async _flushCandidates() {
    const queued = this._pendingCandidates.splice(0);
    for (const c of queued) await this._addCandidate(c);
  }

  _signal(signal) {
    if (this.state === 'closed') return;
    if (signal.kind === 'offer') this._offerSent = { at: Date.now(), iceRestart: !!signal.ice_restart };
    this.room._log('debug', `-> ${signal.kind} to ${this.name} (${this.pc?.signalingState})${signal.sdp ? ` ${signal.sdp.split('\r\n').filter((l) => l.startsWith('m=') || l.startsWith('a=mid')).join(' | ')}` : ''}`);
    this.room.client.signal(this.id, signal);
  }

  /**
   * Once a second (from the watchdog): our offer, unanswered `offer.resendAfterMs` after it was
   * sent, is sent again (CLIENT_RULES): a signal to a peer whose session ended meanwhile is
   * lost, and while an offer waits no new one is made.
   */
  _resendOffer() {
    const pc = this.pc;
    const sent = this._offerSent;
    if (!pc || !sent || pc.signalingState !== 'have-local-offer' || this._makingOffer) {
      if (pc && pc.signalingState !== 'have-local-offer') this._offerSent = null;
      return;
    }
    if (Date.now() - sent.at < CLIENT_RULES.offer.resendAfterMs) return;
    this.room._log('info', `offer to ${this.name} unanswered: sending it again`);
    const offer = { kind: 'offer', sdp: pc.localDescription.sdp };
    if (sent.iceRestart) offer.ice_restart = true;
    this._signal(offer);
  }

  // --- connection state ---

  _onIceState() {
    const pc = this.pc;
    if (!pc) return;
    const ice = pc.iceConnectionState;
    const conn = pc.connectionState;
    const now = Date.now();
    if (conn === 'connected' || ice === 'connected' || ice === 'completed') {
      if (this.state !== 'connected') this.connectedAt = now;
      this.iceRestarts = 0;
      this._notConnectedSince = 0;
      this._setState('connected');
      return;
    }
    if (!this._notConnectedSince) this._notConnectedSince = now;
    if (conn === 'failed' || ice === 'failed') {
      if (this.state !== 'unreachable') this._setState('reconnecting');
      this._nextRestartAt = Math.min(this._nextRestartAt, now); // at once (backoff applies later)
    } else if (ice === 'disconnected') {
      if (this.state === 'connected') this._setState('reconnecting');
      // 'disconnected' often heals by itself within a few seconds.
      this._nextRestartAt = Math.max(this._nextRestartAt, now + this.room.options.iceRestartDelayMs);
    }
  }

  /**
   * Once a second: a connection that is not connected gets ICE restarts with backoff (1, 2, 4,
   * 8, 15 s ... between attempts, forever: the network may come back), and after
   * `unreachableAfterMs` it is reported 'unreachable'.
   */
  _watch() {
    this._reportStats();
    this._resendOffer();
    this._moveOntoFreshCredentials();
    const pc = this.pc;
    const followUp = this._relayFollowUp;
    if (pc && followUp && !followUp.busy && Date.now() >= followUp.at && this.state === 'connected'
      && pc.signalingState === 'stable' && !this._makingOffer) this._relayFollowUpCheck(followUp);
    if (!pc || this.state === 'closed' || !this._notConnectedSince) return;
    const now = Date.now();
    if (now - this._notConnectedSince >= this.room.options.unreachableAfterMs) this._setState('unreachable');
    if (now < this._nextRestartAt || pc.signalingState !== 'stable' || this._makingOffer) return;
    const reason = pc.iceConnectionState === 'failed' ? 'ICE failed'
      : pc.iceConnectionState === 'disconnected' ? 'ICE disconnected'
        : `not connected after ${Math.round((now - this._notConnectedSince) / 1000)} s`;
    this.restartIce(reason);
    const backoff = Math.min(15000, 1000 * 2 ** Math.min(4, this.iceRestarts - 1));
    this._nextRestartAt = now + backoff;
  }

  /**
   * Once a second (from the watchdog): while connected, sends a `stats` report to the server
   * when the selected candidate pair changed since the last report, or `statsEveryMs` after it.
   */
  async _reportStats() {
    const every = this.room.options.statsEveryMs;
    if (!every || this.state !== 'connected' || this._reportingStats) return;
    this._reportingStats = true;
    try {
      const info = await this.connectionInfo();
      if (!info || !info.localType || this.state !== 'connected') return;
      const pairKey = `${info.localType}/${info.remoteType}/${info.protocol}/${info.relayProtocol}`;
      const now = Date.now();
      if (pairKey === this._reportedPair && now - this._reportedAt < every) return;
      if (this.room.client.reportStats(this.id, statsReport(info))) {
        this._reportedPair = pairKey;
        this._reportedAt = now;
      }
    } catch { /* the connection closed under getStats: the next tick reports again */ } finally {
      this._reportingStats = false;
    }
  }

  _setState(state) {
    if (this.state === state || this.state === 'closed') return;
    this.state = state;
    this.room._emit('peer-state', { peer: this, state });
  }

  _after(ms, fn) {
    const t = setTimeout(() => { this._timers.delete(t); fn(); }, ms);
    this._timers.add(t);
    return t;
  }

  _wireChannel(dc, own) {
    const aliases = this.room.options.channelAliases || {};
    const label = Object.hasOwn(aliases, dc.label) ? aliases[dc.label] : dc.label;
    if (label === null) return; // a channel this app does not use
    dc._own = own;
    dc._label = label;
    dc.binaryType = 'arraybuffer';
    this.channels.push(dc);
    // Once per channel: an incoming channel may be announced open and still get its open event.
    let opened = false;
    dc.onopen = () => {
      if (opened) return;
      opened = true;
      this.room._emit('channel-open', { peer: this, label });
    };
    dc.onmessage = (ev) => this.room._emit('message', { peer: this, label, data: ev.data });
    dc.onclose = () => { this.channels = this.channels.filter((c) => c !== dc); };
    if (dc.readyState === 'open') queueMicrotask(() => dc.onopen?.());
  }
}
