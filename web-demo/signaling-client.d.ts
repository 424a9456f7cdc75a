// Types for signaling-client.js (protocol v1, docs/protocol.md).

export declare const PROTOCOL_VERSIONS: readonly number[];

/** How frames travel: a WebSocket, SSE + POST, or long-polling (+ POST). */
export type Transport = 'websocket' | 'sse' | 'long-poll';

/** Every transport, in the order they are tried. */
export declare const TRANSPORTS: readonly Transport[];

/** What a client does after an error (docs/protocol.md, "Client rules"). */
export type RetryClass = 'continue' | 'retry' | 'rejoin' | 'fatal';

/** The client rules every client follows: backoff, acks, and per error code its close code (null: the socket stays open) and class. */
export declare const CLIENT_RULES: {
  readonly backoff: { readonly initialMs: number; readonly maxMs: number; readonly factor: number; readonly jitter: number };
  readonly ack: { readonly every: number; readonly delayMs: number };
  readonly confirm: { readonly every: number; readonly delayMs: number };
  readonly stats: { readonly everyMs: number };
  readonly errors: { readonly [code: string]: { readonly close: number | null; readonly retry: RetryClass } };
};

/** Forgets which transport worked on this page: the next connection tries them in order again. */
export declare function forgetTransports(): void;

/** The HTTP endpoints that go with a WebSocket URL (`wss://h/ws/R?token=T` -> root `https://h/http`, open `https://h/http/R?token=T`). */
export declare function httpEndpoints(wsUrl: string, base?: string): { root: string; open: string };

export interface PeerInfo {
  id: string;
  name?: string;
  /** Whether the recipient (you) is the polite side of the pair formed with this peer. */
  polite: boolean;
}

export interface IceServer {
  urls: string[];
  username?: string;
  credential?: string;
}

export interface SessionInfo {
  version: number;
  peer_id: string;
  session_id: string;
  room: string;
  peers: PeerInfo[];
  ice_servers: IceServer[];
  ping_interval_ms: number;
  ping_timeout_ms: number;
  resume_token: string;
  resume_grace_ms: number;
  max_message_bytes: number;
}

export interface IceCandidateJson {
  candidate: string;
  sdpMid?: string | null;
  sdpMLineIndex?: number | null;
  usernameFragment?: string | null;
}

export type Signal =
  | { kind: 'offer'; sdp: string; ice_restart?: boolean }
  | { kind: 'answer'; sdp: string }
  | { kind: 'candidate'; candidate: IceCandidateJson }
  | { kind: 'end_of_candidates'; username_fragment?: string };

export type ClientState = 'idle' | 'connecting' | 'joined' | 'reconnecting' | 'failed' | 'closed';

export interface StateDetail {
  state: ClientState;
  previous: ClientState;
  /**
   * For 'reconnecting': 'unreachable' | 'closed' | 'timeout' | 'dropped'; for 'failed': the
   * server's error code (e.g. 'room_full'), or, after maxReconnectAttempts, the last
   * reconnect's ('unreachable' | 'closed' | 'timeout').
   */
  code?: string;
  message?: string;
  attempt?: number;
  retryInMs?: number;
  retryAt?: number;
  /**
   * For 'reconnecting' (and 'failed' after maxReconnectAttempts): the error frame the server
   * answered the last attempt with, if any: it was reached but refused the join or ended the
   * link (e.g. 'too_many_rooms', 'too_many_sessions', 'too_many_connections' from an HTTP 429,
   * 'unavailable', 'invalid_message'). Absent when the server was not reached or said nothing
   * (a WebSocket cannot see the body of a refused upgrade).
   */
  serverError?: { code: string; message: string };
}

export interface SignalingClientOptions {
  room?: string;
  name?: string;
  token?: string;
  /** Waits between reconnects, WebSocket and HTTP alike (an HTTP link reopening its stream or poll uses it too); default CLIENT_RULES.backoff. A draining server's reconnect_after_ms is waited at least. */
  backoff?: { initialMs?: number; maxMs?: number; factor?: number; jitter?: number };
  /** Reconnects in a row before the client gives up ('failed'); stats.reconnectAttempts counts the one given up too. */
  maxReconnectAttempts?: number;
  /** A join or resume not answered this long gives the link up and reconnects (default 10000); a join's session whose welcome never came is left first (`leave`), so the others do not see the peer twice. Over HTTP, a send (POST) not answered this long is sent again (its numbered frames take effect once). */
  connectTimeoutMs?: number;
  ackEvery?: number;
  ackDelayMs?: number;
  /** Ping (its pong confirms the numbered signal/broadcast frames) after this many since the last ping, or after confirmDelayMs. */
  confirmEvery?: number;
  confirmDelayMs?: number;
  WebSocket?: typeof WebSocket;
  /** Transports to try, in order (default ['websocket', 'sse', 'long-poll']); e.g. ['sse'] forces SSE + POST. Unknown names are ignored; none usable means ['websocket']. */
  transports?: readonly Transport[];
  /** The root of the HTTP transports, e.g. 'https://host/http' (default: derived from the WebSocket URL); the room stays the WebSocket URL's. */
  httpUrl?: string;
  /** Two WebSockets in a row closing abnormally (1006) this soon after opening count as blocked (default 4000). */
  earlyCloseMs?: number;
  /** SSE: a first event stream without a byte for this long (from its request: a proxy may hold back the headers too), or a later one without its headers, is taken as buffered by a proxy: long-poll instead, on the same session (default 4000). */
  sseFirstByteMs?: number;
  /** Long-polling: a poll unanswered this long is taken as lost (default 40000). */
  pollTimeoutMs?: number;
  /**
   * On SSE or long-polling, with 'websocket' before that transport in `transports`: a WebSocket
   * is tried again after this long, then after twice as long each time (for the client's
   * lifetime: a move does not start it over), up to 10 minutes (default 30000; 0 or not a
   * finite number: never). The try opens a WebSocket beside the HTTP link and, once no request
   * of the HTTP link can still be on its way to the server (at most 0.5 s on long-polling),
   * resumes the session on it. Answered, the session continues on the WebSocket: a 'resumed'
   * event (stats.resumes and stats.upgrades count it), a 'transport' event and a 'state' event
   * to 'joined' (from 'joined'); requests wait for the 'resumed'. Refused, or unanswered
   * within connectTimeoutMs, it stays on the HTTP link, unnoticed. An answer later than that,
   * or a request of the HTTP link that took more than 0.5 s to reach the server, costs a
   * reconnect ('reconnecting', then a resume), never a frame.
   */
  upgradeProbeMs?: number;
  /** The fetch function of the HTTP transports (default globalThis.fetch). */
  fetch?: typeof fetch;
}

export interface SignalingEventMap {
  state: CustomEvent<StateDetail>;
  welcome: CustomEvent<{ session: SessionInfo }>;
  resumed: CustomEvent<{ session: SessionInfo; replayed: number }>;
  /** The session ended and a new one is joined: the old peers are gone, and queued signals (addressed to them) are dropped; queued broadcasts still go, and so do those an HTTP link could not get to the server (a send that failed may have reached the old session: such a broadcast arrives twice). */
  'session-reset': CustomEvent<{ reason: string; peers: string[] }>;
  'peer-joined': CustomEvent<{ peer: PeerInfo }>;
  'peer-left': CustomEvent<{ peerId: string; reason: string }>;
  signal: CustomEvent<{ from: string; signal: Signal }>;
  broadcast: CustomEvent<{ from: string; data: unknown }>;
  'ice-servers': CustomEvent<{ iceServers: IceServer[] }>;
  /** The server is shutting down: the client leaves it after reconnectAfterMs (closes and reconnects, resuming its session, through the balancer on another server). A long-polling client polls on meanwhile as after any answer, each poll through the balancer (protocol.md, `draining`); it waits reconnectAfterMs before reopening a poll that failed. */
  draining: CustomEvent<{ reason: string; reconnectAfterMs: number }>;
  /**
   * Every error frame of the server (a fatal one, e.g. a refused join, also moves the state to
   * 'failed' and rejects connect()), and two of the client's own: 'message_too_large' (a
   * signal, broadcast or stats report over max_message_bytes, not sent; it fires after the
   * call returned, with `ref` = the returned id of a signal or broadcast; a stats report's has
   * no `ref`, its call returned false) and 'invalid_frame' (the server sent text that
   * is not JSON). `request` is the request `ref` names, as sent.
   */
  error: CustomEvent<{ code: string; message: string; ref?: number; request?: object }>;
  /** The transport in use changed: the first frame of a session over a transport sets it (a refusal does not). */
  transport: CustomEvent<{ transport: Transport; previous: Transport | null }>;
}

export declare class SignalingError extends Error {
  code: string;
  ref?: number;
}

export declare class SignalingClient extends EventTarget {
  constructor(url: string, options?: SignalingClientOptions);
  readonly url: string;
  readonly state: ClientState;
  /** The detail of the last 'state' event (undefined before the first): e.g. the reconnecting state's serverError. */
  readonly stateInfo?: StateDetail;
  readonly session: SessionInfo | null;
  readonly peerId: string | null;
  /** The room's other peers; a new Map on each welcome or resumed (read it again, do not keep it). */
  readonly peers: Map<string, PeerInfo>;
  readonly iceServers: IceServer[];
  readonly lastSeq: number;
  /** The transport that carried the current (or last) session's frames; null before the first frame. */
  readonly transport: Transport | null;
  readonly stats: {
    resumes: number; replayed: number; rejoins: number; reconnectAttempts: number; duplicatesDropped: number; iceServerUpdates: number;
    /** Numbered frames (signal, broadcast) sent again after a resume: the dropped link had swallowed them. */
    resent: number;
    /** HTTP transports: event streams or polls reopened from the last seq (no resume needed). */
    streamReconnects: number;
    /**
     * Transports given up on for the next one. While the server cannot be reached at all, each
     * reconnect tries WebSocket, then SSE + POST (whose request failing to reach the server ends
     * the round: long-polling would fail the same way), so this grows by one a reconnect.
     */
    fallbacks: number;
    /** Sessions moved from an HTTP transport back onto a WebSocket (upgradeProbeMs). */
    upgrades: number;
  };
  /**
   * Connects and joins; resolves with the first welcome, rejects on a refusal (room_full,
   * unauthorized, ...). Once per client: a later call returns the same promise. Once the client
   * is 'closed' (close(), leave()) or 'failed', it rejects (SignalingError code 'closed', or the
   * failure's code) and the state stays: a client does not come back, make a new one.
   */
  connect(): Promise<SessionInfo>;
  /** Returns the request id; errors about it arrive as 'error' events with `ref`. After close(), leave() or 'failed', the message is dropped (a client does not come back: make a new one). */
  signal(to: string, signal: Signal): number;
  broadcast(data: unknown): number;
  /** Reports the connection to `peer` (a `stats` message with a request id); false when not joined, while the session moves onto a WebSocket (upgradeProbeMs), or over max_message_bytes (nothing sent). */
  reportStats(peer: string, report: StatsReport): boolean;
  /** Sends `leave` when joined (the others see `peer_left` with reason 'left'), then closes. While reconnecting nothing can be sent: the server ends the session after its grace period (the others see 'disconnected'), and queued messages are dropped. */
  leave(): void;
  /** Closes without leaving (the server keeps the session for its grace period); a second call does nothing. */
  close(): void;
  dropConnection(options?: { holdMs?: number }): void;
  reconnectNow(): void;
  addEventListener<K extends keyof SignalingEventMap>(type: K, listener: (ev: SignalingEventMap[K]) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
}

/** A `stats` report (docs/protocol.md): the selected candidate pair, RTT and byte counts. */
export interface StatsReport {
  pair: {
    local: 'host' | 'srflx' | 'prflx' | 'relay';
    remote: 'host' | 'srflx' | 'prflx' | 'relay';
    protocol: 'udp' | 'tcp';
    relay_protocol?: 'udp' | 'tcp' | 'tls';
    relay_url?: string;
  } | null;
  rtt_ms?: number;
  bytes_sent: number;
  bytes_received: number;
}
