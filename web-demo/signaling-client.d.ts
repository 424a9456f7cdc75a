// Types for signaling-client.js (protocol v1, docs/protocol.md).

export declare const PROTOCOL_VERSIONS: readonly number[];

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
  /** For 'reconnecting': 'unreachable' | 'closed' | 'timeout' | 'dropped'; for 'failed': an error code such as 'room_full'. */
  code?: string;
  message?: string;
  attempt?: number;
  retryInMs?: number;
  retryAt?: number;
}

export interface SignalingClientOptions {
  room?: string;
  name?: string;
  token?: string;
  backoff?: { initialMs?: number; maxMs?: number; factor?: number; jitter?: number };
  maxReconnectAttempts?: number;
  connectTimeoutMs?: number;
  ackEvery?: number;
  ackDelayMs?: number;
  WebSocket?: typeof WebSocket;
}

export interface SignalingEventMap {
  state: CustomEvent<StateDetail>;
  welcome: CustomEvent<{ session: SessionInfo }>;
  resumed: CustomEvent<{ session: SessionInfo; replayed: number }>;
  'session-reset': CustomEvent<{ reason: string; peers: string[] }>;
  'peer-joined': CustomEvent<{ peer: PeerInfo }>;
  'peer-left': CustomEvent<{ peerId: string; reason: string }>;
  signal: CustomEvent<{ from: string; signal: Signal }>;
  broadcast: CustomEvent<{ from: string; data: unknown }>;
  'ice-servers': CustomEvent<{ iceServers: IceServer[] }>;
  draining: CustomEvent<{ reason: string; reconnectAfterMs: number }>;
  error: CustomEvent<{ code: string; message: string; ref?: number; request?: object }>;
}

export declare class SignalingError extends Error {
  code: string;
  ref?: number;
}

export declare class SignalingClient extends EventTarget {
  constructor(url: string, options?: SignalingClientOptions);
  readonly url: string;
  readonly state: ClientState;
  readonly session: SessionInfo | null;
  readonly peerId: string | null;
  readonly peers: Map<string, PeerInfo>;
  readonly iceServers: IceServer[];
  readonly lastSeq: number;
  readonly stats: { resumes: number; replayed: number; rejoins: number; reconnectAttempts: number; duplicatesDropped: number; iceServerUpdates: number };
  /** Connects and joins; resolves with the first welcome, rejects on a refusal (room_full, unauthorized, ...). */
  connect(): Promise<SessionInfo>;
  /** Returns the request id; errors about it arrive as 'error' events with `ref`. */
  signal(to: string, signal: Signal): number;
  broadcast(data: unknown): number;
  leave(): void;
  close(): void;
  dropConnection(options?: { holdMs?: number }): void;
  reconnectNow(): void;
  addEventListener<K extends keyof SignalingEventMap>(type: K, listener: (ev: SignalingEventMap[K]) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
}
