// admin.js: renders the snapshots of /events (Server-Sent Events, one a second) as tables.

const $ = (id) => document.getElementById(id);

export function formatBytes(n) {
  if (!n) return '0 B';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  const i = Math.min(units.length - 1, Math.floor(Math.log(n) / Math.log(1000)));
  return `${(n / 1000 ** i).toFixed(i ? 1 : 0)} ${units[i]}`;
}

function formatDuration(ms) {
  if (ms == null) return '–';
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function cell(row, text, attrs = {}) {
  const td = document.createElement('td');
  td.textContent = text ?? '–';
  for (const [k, v] of Object.entries(attrs)) td.setAttribute(k, v);
  row.appendChild(td);
  return td;
}

function renderRooms(rooms) {
  const body = $('rooms');
  body.replaceChildren();
  for (const room of rooms) {
    for (const peer of room.peers) {
      const links = peer.links.length ? peer.links : [null];
      for (const link of links) {
        const tr = document.createElement('tr');
        tr.dataset.room = room.room;
        tr.dataset.peer = peer.id;
        cell(tr, room.room, { 'data-field': 'room' });
        cell(tr, peer.id);
        cell(tr, peer.name);
        cell(tr, peer.node);
        cell(tr, peer.state);
        cell(tr, peer.transport, { 'data-field': 'signaling' });
        cell(tr, formatDuration(peer.connected_ms));
        cell(tr, link?.peer);
        const path = link ? link.path : 'none';
        cell(tr, path, { 'data-field': 'path', class: path });
        const pair = link?.pair;
        cell(tr, pair ? `${pair.local} ↔ ${pair.remote}` : null, { 'data-field': 'candidates' });
        cell(tr, pair ? pair.protocol + (pair.relay_protocol ? ` (TURN over ${pair.relay_protocol})` : '') : null);
        cell(tr, pair?.relay_url ?? (pair && pair.remote === 'relay' ? "peer's relay" : null));
        cell(tr, link?.rtt_ms != null ? `${link.rtt_ms} ms` : null);
        cell(tr, link ? `${formatBytes(link.bytes_sent)} / ${formatBytes(link.bytes_received)}` : null);
        body.appendChild(tr);
      }
    }
  }
  $('no-rooms').hidden = rooms.length > 0;
}

function renderRelays(relays) {
  const body = $('relays');
  body.replaceChildren();
  for (const relay of relays) {
    const tr = document.createElement('tr');
    cell(tr, relay.id);
    cell(tr, relay.urls.join(' '));
    cell(tr, String(relay.allocations), { 'data-field': 'allocations' });
    cell(tr, `${formatBytes(relay.bytes_per_sec)}/s`);
    cell(tr, relay.state);
    body.appendChild(tr);
  }
}

export function render(snap) {
  $('node').textContent = snap.node === 'local' ? '' : `node ${snap.node}`;
  $('draining').hidden = !snap.draining;
  $('room-count').textContent = String(snap.rooms.length);
  $('peer-count').textContent = String(snap.rooms.reduce((n, r) => n + r.peers.length, 0));
  const t = snap.traffic;
  $('relayed-share').textContent = t.peers_reporting
    ? `${Math.round(t.relayed_share * 100)} % (${t.peers_relayed}/${t.peers_reporting})` : '–';
  $('egress').textContent = formatBytes(t.turn_egress_bytes);
  $('egress-source').textContent = t.egress_source === 'relay' ? 'in-process relay' : 'reported by clients';
  $('cost').textContent = `$${t.estimated_cost.toFixed(4)}`;
  $('price').textContent = `at $${t.price_per_gb}/GB`;
  $('error').textContent = snap.error ? `cluster store: ${snap.error}` : '';
  renderRooms(snap.rooms);
  renderRelays(snap.relays);
  document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
}

const events = new EventSource('/events');
events.addEventListener('snapshot', (e) => {
  $('status').textContent = 'live';
  $('status').className = '';
  render(JSON.parse(e.data));
});
events.onerror = () => {
  $('status').textContent = 'reconnecting…';
  $('status').className = 'down';
};
