// Shared notes on Yjs, synced peer to peer by y-webrtc, with this server as y-webrtc's
// signaling server (`/y-webrtc`). Bundle it once (the page loads the bundle):
//   npx esbuild web-demo/examples/yjs-notes.js --bundle --format=esm \
//       --define:global=globalThis --outfile=web-demo/examples/yjs-notes.bundle.js
// then serve the demo from disk: `signaling --web-dir web-demo`, and open
// /examples/yjs-notes.html?room=NAME. Optional: &password=SECRET (y-webrtc's end-to-end
// encryption of the signaling payloads); &token=JWT (a room token, on a server with
// --jwt-secret: it opens the topic and fetches TURN credentials from /v1/ice-servers);
// &relay=1 (relay-only: every byte through the TURN relay).
import * as Y from 'yjs';
import { WebrtcProvider } from 'y-webrtc';

const params = new URLSearchParams(location.search);
const room = params.get('room') || 'notes';
const password = params.get('password') || undefined;
const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
const token = params.get('token');
const tokenQuery = token ? `?token=${encodeURIComponent(token)}` : '';
const signaling = params.get('signaling') || `${scheme}://${location.host}/y-webrtc${tokenQuery}`;

// With a room token, TURN credentials for the room (the server's relay, or its fleet's).
let iceServers;
if (token) {
  const res = await fetch(`/v1/ice-servers?room=${encodeURIComponent(room)}`, {
    headers: { Authorization: `Bearer ${token}` },
  });
  if (res.ok) iceServers = (await res.json()).iceServers;
}
const config = { iceServers };
if (params.get('relay') === '1') config.iceTransportPolicy = 'relay';

const doc = new Y.Doc();
const text = doc.getText('notes');
const provider = new WebrtcProvider(room, doc, {
  signaling: [signaling],
  password,
  peerOpts: iceServers ? { config } : {},
});

const area = document.getElementById('notes');
const status = document.getElementById('status');
document.getElementById('room').textContent = room;

// Local edits: replace the changed span (enough for a notes box; a rich editor would bind
// Y.Text with its own binding, e.g. y-prosemirror).
area.addEventListener('input', () => {
  const before = text.toString();
  const after = area.value;
  let start = 0;
  while (start < before.length && start < after.length && before[start] === after[start]) start += 1;
  let endBefore = before.length;
  let endAfter = after.length;
  while (endBefore > start && endAfter > start && before[endBefore - 1] === after[endAfter - 1]) {
    endBefore -= 1;
    endAfter -= 1;
  }
  doc.transact(() => {
    if (endBefore > start) text.delete(start, endBefore - start);
    if (endAfter > start) text.insert(start, after.slice(start, endAfter));
  });
});
// Remote edits.
text.observe((event) => {
  if (!event.transaction.local) area.value = text.toString();
});

const peers = () => provider.room ? provider.room.webrtcConns.size : 0;
setInterval(() => {
  status.textContent = `${peers()} peer(s) connected over WebRTC`;
}, 250);

/** The candidate types of each WebRTC connection's selected pair (`relay` when relayed). */
async function pairTypes() {
  const types = [];
  for (const conn of provider.room ? provider.room.webrtcConns.values() : []) {
    const stats = await conn.peer._pc.getStats();
    for (const s of stats.values()) {
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') {
        types.push(stats.get(s.localCandidateId)?.candidateType);
      }
    }
  }
  return types;
}

// For tests and the curious.
window.notes = { doc, text, provider, peers, pairTypes };
