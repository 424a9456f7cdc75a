// Shared notes on Yjs, synced peer to peer by y-webrtc, with this server as y-webrtc's
// signaling server (`/y-webrtc`). Bundle it once (the page loads the bundle):
//   npx esbuild web-demo/examples/yjs-notes.js --bundle --format=esm \
//       --define:global=globalThis --outfile=web-demo/examples/yjs-notes.bundle.js
// then serve the demo from disk: `signaling --web-dir web-demo`, and open
// /examples/yjs-notes.html?room=NAME (optional: &password=SECRET, y-webrtc's end-to-end
// encryption of the signaling payloads).
import * as Y from 'yjs';
import { WebrtcProvider } from 'y-webrtc';

const params = new URLSearchParams(location.search);
const room = params.get('room') || 'notes';
const password = params.get('password') || undefined;
const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
const signaling = params.get('signaling') || `${scheme}://${location.host}/y-webrtc`;

const doc = new Y.Doc();
const text = doc.getText('notes');
const provider = new WebrtcProvider(room, doc, { signaling: [signaling], password });

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

// For tests and the curious.
window.notes = { doc, text, provider, peers };
