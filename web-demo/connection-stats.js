// connection-stats.js: turns a RemotePeer.connectionInfo() snapshot (getStats) into the text of
// the demo's connection panel.

/**
 * @param {import('./webrtc-room.js').ConnectionInfo} info
 * @returns {{ path: string, pathKey: string, protocol: string, rtt: string, bytes: string,
 *             addresses: string, route: ''|'direct'|'relay', relay: string, relayKey: string }}
 * `relay`: the TURN server in use on our side (`HOST:PORT`), "peer's" when only the other side
 * relays, "none" for a direct pair; `relayKey`: our TURN server's `HOST:PORT`, or ''.
 */
export function describeConnection(info) {
  const selected = !!info.localType;
  return {
    path: selected ? `${info.localType} ↔ ${info.remoteType}` : '–',
    pathKey: selected ? `${info.localType}/${info.remoteType}` : '',
    protocol: info.protocol
      ? `${info.protocol.toUpperCase()}${info.relayProtocol ? ` (to TURN: ${info.relayProtocol.toUpperCase()})` : ''}`
      : '–',
    rtt: info.rttMs != null ? `${info.rttMs} ms` : '–',
    bytes: selected ? `${formatBytes(info.bytesSent)} / ${formatBytes(info.bytesReceived)}` : '–',
    addresses: info.localAddress ? `${info.localAddress} ↔ ${info.remoteAddress}` : '',
    route: info.localType === 'relay' || info.remoteType === 'relay' ? 'relay' : selected ? 'direct' : '',
    relay: !selected ? '–'
      : info.localType === 'relay' ? info.relayServer || 'unknown'
        : info.remoteType === 'relay' ? 'peer\'s' : 'none',
    relayKey: info.localType === 'relay' ? info.relayServer || '' : '',
  };
}

export function formatBytes(n) {
  if (!n) return '0 B';
  const units = ['B', 'KB', 'MB', 'GB'];
  const i = Math.min(units.length - 1, Math.floor(Math.log(n) / Math.log(1024)));
  return `${(n / 1024 ** i).toFixed(i ? 1 : 0)} ${units[i]}`;
}
