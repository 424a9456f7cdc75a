// Types for webrtc-room.js.

import type { SignalingClient, SignalingClientOptions, Signal, StateDetail, PeerInfo } from './signaling-client.js';

export interface ChannelSpec {
  label: string;
  init?: RTCDataChannelInit;
}

export declare const DEFAULT_CHANNELS: readonly ChannelSpec[];

export interface WebRTCRoomOptions {
  room?: string;
  name?: string;
  token?: string;
  /** Force TURN (iceTransportPolicy 'relay'). */
  relayOnly?: boolean;
  localStream?: MediaStream | null;
  channels?: readonly ChannelSpec[];
  /** Incoming channels with these labels count as the mapped label; null ignores them. Default { reliable: 'chat', unreliable: null }. */
  channelAliases?: Record<string, string | null>;
  politeOfferWaitMs?: number;
  connectWatchdogMs?: number;
  /** Report each connection to the server (`stats`) this often and when its selected pair changes; 0: never. Default CLIENT_RULES.stats.everyMs. */
  statsEveryMs?: number;
  rtcConfig?: RTCConfiguration;
  iceRestartDelayMs?: number;
  unreachableAfterMs?: number;
  /** Leave the room on `pagehide` (the page closed, reloaded or navigated from), so the others see it leave at once rather than after the server's resume grace period (30 s). Default true. A page the browser then restores from its back/forward cache (`pageshow` with `persisted`) has left: make a new WebRTCRoom to join again. */
  leaveOnPageHide?: boolean;
  signaling?: SignalingClientOptions;
}

export type PeerState = 'connecting' | 'connected' | 'reconnecting' | 'unreachable' | 'closed';

export interface ConnectionInfo {
  localType: 'host' | 'srflx' | 'prflx' | 'relay' | null;
  remoteType: 'host' | 'srflx' | 'prflx' | 'relay' | null;
  protocol?: 'udp' | 'tcp' | null;
  relayProtocol?: 'udp' | 'tcp' | 'tls' | null;
  /** For a relayed local candidate: the TURN URL it was allocated through (RTCIceCandidateStats.url). */
  relayUrl?: string | null;
  /** `HOST:PORT` of that TURN server. */
  relayServer?: string | null;
  localAddress?: string | null;
  remoteAddress?: string | null;
  rttMs?: number | null;
  bytesSent?: number;
  bytesReceived?: number;
  framesDecoded: number;
  frameWidth: number;
  frameHeight: number;
}

export declare class RemotePeer {
  readonly id: string;
  readonly name: string;
  readonly polite: boolean;
  readonly state: PeerState;
  readonly pc: RTCPeerConnection;
  readonly channels: RTCDataChannel[];
  readonly remoteStream: MediaStream | null;
  /** ICE restarts since the connection was last connected. */
  readonly iceRestarts: number;
  /** ICE restarts because the room's relay moved away from under this connection (never reset). */
  readonly relayMoves: number;
  /** The TURN URLs of the configuration in effect. */
  readonly turnUrls: string[];
  send(label: string, data: string | ArrayBuffer | ArrayBufferView | Blob): boolean;
  isOpen(label: string): boolean;
  restartIce(reason: string): void;
  /**
   * Replaces the RTCPeerConnection with a new one under the room's current configuration (new
   * ICE and DTLS sessions, new channels); `offer`: make the first offer at once. The other side
   * sees an offer with a new DTLS fingerprint and does the same.
   */
  rebuild(reason: string, offer?: boolean): void;
  /** Applies the signaling client's current ICE servers; restarts ICE if the relay moved (see relayMoved). */
  applyFreshIceServers(): Promise<void>;
  connectionInfo(): Promise<ConnectionInfo | null>;
  receiveSignal(signal: Signal): Promise<void>;
}

export interface WebRTCRoomEventMap {
  peer: CustomEvent<{ peer: RemotePeer }>;
  'peer-removed': CustomEvent<{ peer: RemotePeer; reason: string }>;
  'peer-state': CustomEvent<{ peer: RemotePeer; state: PeerState }>;
  /** Once per data channel that opens: this side's own channel and the other side's of a label each fire it. */
  'channel-open': CustomEvent<{ peer: RemotePeer; label: string }>;
  message: CustomEvent<{ peer: RemotePeer; label: string; data: string | ArrayBuffer }>;
  track: CustomEvent<{ peer: RemotePeer; track: MediaStreamTrack; stream: MediaStream }>;
  /** An ICE restart towards a peer began; reason 'relay moved' when the room's relay changed under a relayed pair. */
  'ice-restart': CustomEvent<{ peer: RemotePeer; reason: string }>;
  /** A TURN server answered an Allocate with an error (401: refused credentials); once per URL and code per connection. */
  'turn-error': CustomEvent<{ peer: RemotePeer; url: string; code: number; text: string }>;
  signaling: CustomEvent<StateDetail>;
  /** 'debug': every signal and negotiation step (verbose); 'info': restarts, glare, relay moves; 'warn': failures. */
  log: CustomEvent<{ level: 'debug' | 'info' | 'warn'; message: string }>;
}

export declare class WebRTCRoom extends EventTarget {
  constructor(signaling: string | SignalingClient, options?: WebRTCRoomOptions);
  readonly client: SignalingClient;
  readonly peers: Map<string, RemotePeer>;
  readonly peerId: string | null;
  readonly relayOnly: boolean;
  readonly localStream: MediaStream | null;
  /** Joins the room (SignalingClient.connect); with leaveOnPageHide (the default), leaves on `pagehide`. After leave() it rejects: make a new room to join again. */
  join(): ReturnType<SignalingClient['connect']>;
  leave(): void;
  /** Returns how many peers it was sent to. */
  send(label: string, data: string | ArrayBuffer | ArrayBufferView | Blob, to?: string): number;
  /**
   * Sends this stream's tracks to every peer: a kind already sent is replaced, a new kind added
   * (renegotiation), a kind the stream lacks (every kind for null) is no longer sent: its sender
   * gets no track and stops sending, so the peers' track of that kind is muted.
   */
  setLocalStream(stream: MediaStream | null): Promise<void>;
  setRelayOnly(on: boolean): void;
  rtcConfiguration(): RTCConfiguration;
  addEventListener<K extends keyof WebRTCRoomEventMap>(type: K, listener: (ev: WebRTCRoomEventMap[K]) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
}

/** The TURN URLs (turn:, turns:) of RTCIceServer objects: sorted, without duplicates. */
export declare function turnUrls(iceServers: readonly RTCIceServer[] | null | undefined): string[];
/** The server a turn:/turns: URL names (host lower case, without IPv6 brackets; default ports), or null. */
export declare function turnServer(url: string | null | undefined): { host: string; port: number } | null;
/** `HOST:PORT` of a TURN URL (IPv6 in brackets), or null. */
export declare function turnServerAddress(url: string | null | undefined): string | null;
/** Whether the TURN server of `relayUrl` (host:port) is named by one of `urls`; null when `relayUrl` is no TURN URL. */
export declare function relayListed(urls: readonly string[], relayUrl: string | null | undefined): boolean | null;
/**
 * Whether a connection restarts ICE when the TURN URLs change from `before` to `after`: not for
 * the same URLs; for a relayed local candidate whose TURN server (`relayUrl`, by host:port) is no
 * longer listed or unknown; not for a direct one; without a selected pair only if `pathLost`.
 */
export declare function relayMoved(
  before: readonly string[],
  after: readonly string[],
  localType: ConnectionInfo['localType'],
  relayUrl: string | null,
  pathLost?: boolean,
): boolean;

export type { PeerInfo };
