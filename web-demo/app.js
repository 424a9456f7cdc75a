// app.js: the demo page's wiring. Joins the room named by the URL, runs a mesh video call with a
// data channel chat and a shared canvas, and shows every connection's state.
//
// Modules: signaling-client.js + webrtc-room.js (the reusable JS client), shared-canvas.js (the
// board), chat-log.js (chat rendering), connection-stats.js (panel text from getStats),
// room-url.js (room and name from the URL). This file connects them to the DOM.
//
// URL: /r/<room> or /?room=<room> (a room is generated when absent; an invalid name is
// normalised the same way in every browser, see room-url.js). Optional parameters:
//   name=<display name> (skips the join screen, shown otherwise: name, camera preview, devices)
//   relay=1 (start relay-only)   media=0 (no camera/mic, no join screen)
//   signal=<ws url> (signaling server, default ws(s)://<this host>/ws; kept in the invite link)
//   transport=<list> (signaling transports to try, comma-separated, of websocket, sse, long-poll;
//                     default all three in that order: e.g. transport=long-poll forces long-polling)
//   unreachable_ms=<ms> (how long before a peer that cannot be reached is shown as such)
//
// Test hooks: `window.__demo` (state, actions) and data attributes on <body>
// (data-signaling, data-transport, data-media, data-peers, data-connected; data-left=1 after
// Leave, data-room-refused=1 for a room name that cannot be used, data-chat-open=1 while the
// phone chat overlay is open), on
// #signaling-transport (data-transport: websocket | sse | long-poll), on each remote tile
// (data-peer-id, data-state) and on each connection panel entry (data-peer-id, data-state,
// data-path, data-relay: HOST:PORT of the TURN server our side relays through, or empty).
// `window.__demo.events` records every ICE restart ({ type: 'ice-restart', id, reason }; reason
// 'relay moved' when the room's relay changed under a relayed pair) and `__demo.peers()` gives
// each peer's `relayMoves` count.

import { WebRTCRoom, turnUrls } from './webrtc-room.js';
import { TRANSPORTS } from './signaling-client.js';
import { SharedCanvas, peerColor } from './shared-canvas.js';
import { roomFromUrl, invalidRoomInUrl, displayName, cleanName, nameProblem, initials } from './room-url.js';
import { describeConnection } from './connection-stats.js';
import { ChatLog } from './chat-log.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

// --- room, name, signaling URL ---

const rejectedRoom = invalidRoomInUrl(params);
const roomName = roomFromUrl(params);
let myName = displayName(params);
const signalingUrl = params.get('signal') || `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
// A page on another signaling server (`signal=`) invites to that server: the others must meet
// there, not on the one that serves the page.
const inviteLink = `${location.origin}/r/${encodeURIComponent(roomName || '')}${params.get('signal') ? `?signal=${encodeURIComponent(params.get('signal'))}` : ''}`;
const transports = (params.get('transport') || '').split(',').map((s) => s.trim()).filter((s) => TRANSPORTS.includes(s));

// --- state and test hooks ---

const demo = {
  room: null,
  roomName,
  name: myName,
  signalingUrl,
  media: 'pending',
  chat: [],
  events: [],
  canvas: null,
  peers() {
    return [...(this.room?.peers.values() || [])].map((p) => ({
      id: p.id, name: p.name, polite: p.polite, state: p.state,
      channels: p.channels.filter((c) => c.readyState === 'open').map((c) => c._label),
      relayMoves: p.relayMoves,
    }));
  },
  async stats() {
    const out = {};
    for (const p of this.room?.peers.values() || []) out[p.id] = await p.connectionInfo();
    return out;
  },
  sendChat(text) { return sendChat(text); },
  drawStroke(points, color) { return this.canvas.drawLocalStroke(points, color); },
  dropSignaling(holdMs = 0) { this.room.client.dropConnection({ holdMs }); },
  setRelayOnly(on) { setRelayOnly(on); },
};
window.__demo = demo;
const note = (e) => { demo.events.push({ t: Math.round(performance.now()), ...e }); if (demo.events.length > 2000) demo.events.shift(); };

// --- page furniture ---

$('room-name').textContent = roomName || '–';
$('local-name').textContent = `${myName} (you)`;
$('local-avatar').textContent = initials(myName);
$('local-avatar').style.background = peerColor(myName);
document.title = `${roomName || 'no room'} · webrtc-stack demo`;

function toast(text) {
  const el = $('copy-toast');
  el.textContent = text;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 2500);
}

$('copy-link').addEventListener('click', async () => {
  // Phones: the native share sheet, where there is one.
  if (navigator.share && matchMedia('(max-width: 640px), (pointer: coarse)').matches) {
    try {
      await navigator.share({ title: `Join ${roomName}`, text: `Join me in “${roomName}”`, url: inviteLink });
      toast('Link shared');
      return;
    } catch (err) {
      if (err?.name === 'AbortError') return; // the user closed the sheet
    }
  }
  let ok = false;
  try { await navigator.clipboard.writeText(inviteLink); ok = true; } catch {
    // Clipboard API needs a secure context: fall back to a selection copy.
    const ta = document.createElement('textarea');
    ta.value = inviteLink;
    document.body.append(ta);
    ta.select();
    try { ok = document.execCommand('copy'); } catch { ok = false; }
    ta.remove();
  }
  $('copy-label').textContent = ok ? 'Link copied!' : inviteLink;
  toast(ok ? 'Link copied!' : inviteLink);
  setTimeout(() => { $('copy-label').textContent = 'Copy invite link'; }, 2500);
});

// Phones: the chat is an overlay opened from the control bar, which counts unread messages.
let unread = 0;
const chatOpen = () => document.body.dataset.chatOpen === '1';
function renderUnread() {
  $('chat-unread').hidden = unread === 0;
  $('chat-unread').textContent = unread > 99 ? '99+' : String(unread);
}
$('toggle-chat').addEventListener('click', () => {
  const open = !chatOpen();
  document.body.dataset.chatOpen = open ? '1' : '0';
  $('toggle-chat').setAttribute('aria-pressed', String(open));
  $('toggle-chat').title = open ? 'Hide the chat' : 'Show the chat';
  if (open) { unread = 0; renderUnread(); }
});
/** Whether the chat is out of sight (a phone with the overlay closed). */
const chatHidden = () => $('chat-card').getClientRects().length === 0;

function setStatus(tone, text) {
  const el = $('status');
  el.dataset.tone = tone;
  $('status-text').textContent = text;
}

let bannerOwner = null;
function showBanner(owner, tone, text, action) {
  bannerOwner = owner;
  const b = $('banner');
  b.hidden = false;
  b.dataset.tone = tone;
  b.dataset.kind = owner;
  $('banner-text').textContent = text;
  const btn = $('banner-action');
  if (action) {
    btn.hidden = false;
    btn.textContent = action.label;
    btn.onclick = action.run;
  } else {
    btn.hidden = true;
    btn.onclick = null;
  }
}
function hideBanner(owner) {
  if (owner && bannerOwner !== owner) return;
  bannerOwner = null;
  $('banner').hidden = true;
}

// --- media ---

let localStream = null;
let leaving = false; // set once by Leave: the page is done with this room

// What the join screen chose: devices, and whether the camera / microphone start on.
const choice = { camera: true, mic: true, cameraId: '', micId: '' };
const videoConstraints = () => ({ width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 24 }, ...(choice.cameraId ? { deviceId: { exact: choice.cameraId } } : {}) });
const audioConstraints = () => ({ echoCancellation: true, noiseSuppression: true, ...(choice.micId ? { deviceId: { exact: choice.micId } } : {}) });

async function startMedia() {
  if (params.get('media') === '0') { setMedia('off', 'Camera off'); return; }
  if (!navigator.mediaDevices?.getUserMedia) { setMedia('unavailable', 'No camera access on this page (needs https or localhost)'); return; }
  if (!choice.camera && !choice.mic) {
    // Both off: nothing is opened; either can be turned on later from the control bar.
    localStream = new MediaStream();
    setMedia('granted', 'Camera off');
    renderMediaButtons();
    return;
  }
  try {
    localStream = await navigator.mediaDevices.getUserMedia({
      video: choice.camera ? videoConstraints() : false,
      audio: choice.mic ? audioConstraints() : false,
    });
  } catch (err) {
    if (err.name === 'NotFoundError' || err.name === 'OverconstrainedError') {
      try { localStream = await navigator.mediaDevices.getUserMedia({ audio: true }); } catch { localStream = null; }
    }
    if (!localStream) {
      const denied = err.name === 'NotAllowedError' || err.name === 'SecurityError';
      setMedia(denied ? 'denied' : 'none', denied ? 'Camera blocked' : 'No camera found');
      showBanner('media', 'info', denied
        ? 'Camera and microphone permission was denied. You can still chat and draw; allow access in the address bar and retry to join the call.'
        : 'No camera or microphone was found. You can still chat and draw.',
      { label: 'Retry camera', run: () => { hideBanner('media'); startMedia(); } });
      return;
    }
  }
  if (leaving) {
    // Left while the permission prompt was open: the camera must not stay on.
    for (const track of localStream.getTracks()) track.stop();
    localStream = null;
    return;
  }
  const v = $('local-video');
  v.srcObject = localStream;
  v.play().catch(() => {});
  const hasVideo = localStream.getVideoTracks().length > 0;
  setMedia('granted', hasVideo ? '' : (choice.camera ? 'Microphone only' : 'Camera off'));
  $('tile-local').classList.toggle('has-video', hasVideo);
  renderMediaButtons();
  hideBanner('media');
  if (demo.room) await demo.room.setLocalStream(localStream);
}

/**
 * Turns on a kind of media the call started without (joined with the camera off): opens the
 * device and adds the track to the call, which renegotiates.
 */
async function addTrack(kind) {
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia(kind === 'video' ? { video: videoConstraints() } : { audio: audioConstraints() });
  } catch (err) {
    showBanner('media', 'info', `Could not turn on the ${kind === 'video' ? 'camera' : 'microphone'}: ${err.message || err.name}`);
    return;
  }
  if (leaving) { for (const t of stream.getTracks()) t.stop(); return; }
  localStream = new MediaStream([...(localStream?.getTracks() || []), ...stream.getTracks()]);
  const v = $('local-video');
  v.srcObject = localStream;
  v.play().catch(() => {});
  if (kind === 'video') { $('tile-local').classList.add('has-video'); $('local-media-note').textContent = ''; }
  renderMediaButtons();
  renderLocalFlags();
  note({ type: 'track-added', kind });
  await room.setLocalStream(sentStream());
}

/**
 * What the call sends: the local tracks without a camera that is turned off. A disabled track
 * would still send black frames, which the others cannot tell from a picture; a kind not sent
 * mutes their track, and their tile shows the placeholder.
 */
function sentStream() {
  const off = localStream?.getVideoTracks().filter((t) => !t.enabled) || [];
  return off.length ? new MediaStream(localStream.getTracks().filter((t) => !off.includes(t))) : localStream;
}

/** The Mic / Camera buttons show "off" for a kind that is disabled or not opened at all. */
function renderMediaButtons() {
  for (const [kind, id, name] of [['audio', 'toggle-mic', 'microphone'], ['video', 'toggle-cam', 'camera']]) {
    const tracks = kind === 'audio' ? localStream?.getAudioTracks() : localStream?.getVideoTracks();
    const on = !!tracks?.length && tracks[0].enabled;
    $(id).setAttribute('aria-pressed', String(!on));
    $(id).title = `${on ? 'Turn off' : 'Turn on'} ${name}`;
  }
}

function setMedia(state, note_) {
  demo.media = state;
  document.body.dataset.media = state;
  $('local-media-note').textContent = note_ || '';
  $('toggle-cam').disabled = state !== 'granted';
  $('toggle-mic').disabled = state !== 'granted';
}

function toggleTrack(kind, button) {
  if (!localStream) return;
  const tracks = kind === 'audio' ? localStream.getAudioTracks() : localStream.getVideoTracks();
  if (!tracks.length) { addTrack(kind); return; }
  const enabled = !tracks[0].enabled;
  for (const t of tracks) t.enabled = enabled;
  button.setAttribute('aria-pressed', String(!enabled));
  button.title = `${enabled ? 'Turn off' : 'Turn on'} ${kind === 'audio' ? 'microphone' : 'camera'}`;
  if (kind === 'video') {
    $('tile-local').classList.toggle('has-video', enabled);
    room.setLocalStream(sentStream()).catch((err) => note({ type: 'log', level: 'warn', message: `camera ${enabled ? 'on' : 'off'}: ${err.message}` }));
  }
  renderLocalFlags();
}
$('toggle-mic').addEventListener('click', (e) => toggleTrack('audio', e.currentTarget));
$('toggle-cam').addEventListener('click', (e) => toggleTrack('video', e.currentTarget));

function renderLocalFlags() {
  const flags = [];
  if (localStream?.getAudioTracks()[0]?.enabled === false) flags.push('muted');
  if (localStream?.getVideoTracks()[0]?.enabled === false) flags.push('camera off');
  $('local-flags').textContent = flags.join(' · ');
}

// --- the room ---

const relayOnlyAtStart = params.get('relay') === '1';
$('relay-only').checked = relayOnlyAtStart;

const roomOptions = { room: roomName, name: myName, relayOnly: relayOnlyAtStart };
// For tests and demos of the failure states: how long before a peer counts as unreachable.
if (Number(params.get('unreachable_ms')) > 0) roomOptions.unreachableAfterMs = Number(params.get('unreachable_ms'));
if (transports.length) roomOptions.signaling = { transports };
const room = new WebRTCRoom(signalingUrl, roomOptions);
demo.room = room;
demo.client = room.client;

const canvas = new SharedCanvas($('board'), $('cursors'), { send: (label, data, to) => room.send(label, data, to) });
demo.canvas = canvas;
canvas.onChange = () => { $('canvas-hint').hidden = canvas.strokeCount > 0; };

const SWATCHES = ['#4f9dff', '#ff6b6b', '#ffd166', '#06d6a0', '#c77dff', '#f8f9fa'];
for (const c of SWATCHES) {
  const b = document.createElement('button');
  b.type = 'button';
  b.className = 'swatch';
  b.style.setProperty('--swatch', c);
  b.setAttribute('role', 'radio');
  b.setAttribute('aria-label', c);
  b.setAttribute('aria-checked', String(c === canvas.color));
  b.addEventListener('click', () => {
    canvas.color = c;
    for (const o of $('swatches').children) o.setAttribute('aria-checked', String(o === b));
  });
  $('swatches').append(b);
}
$('clear-canvas').addEventListener('click', () => canvas.clear(true));

function setRelayOnly(on) {
  $('relay-only').checked = on;
  room.setRelayOnly(on);
  note({ type: 'relay-only', on });
  if (on) {
    // At once, not after the next getStats: "Relay only" is never shown next to a direct path.
    for (const t of tiles.values()) {
      if (t.tile.dataset.path === 'relay') continue;
      t.tile.dataset.path = 'switching';
      t.conn.dataset.path = 'switching';
      t.conn.querySelector('.c-path').textContent = 'switching to the relay…';
    }
  }
  renderRelaySwitch();
  refreshStats();
}
$('relay-only').addEventListener('change', (e) => setRelayOnly(e.currentTarget.checked));

/**
 * "Relay only" needs a TURN server: when the server's ICE servers list none, the switch is
 * disabled (it stays usable to turn relay-only off, e.g. after `relay=1`), and says why.
 */
function renderRelaySwitch() {
  if (!room.client.session) return; // not known before the first welcome
  const hasTurn = turnUrls(room.client.iceServers).length > 0;
  const input = $('relay-only');
  input.disabled = !hasTurn && !input.checked;
  input.closest('.switch').title = hasTurn
    ? 'Force every connection through the TURN relay'
    : 'This signaling server offers no TURN relay: connections cannot be forced through one';
  $('relay-note').hidden = hasTurn;
}
room.client.addEventListener('ice-servers', renderRelaySwitch);

/** Leave: every local track stopped (the camera light goes off), every connection closed. */
function leave() {
  if (leaving) return;
  leaving = true;
  note({ type: 'leave' });
  room.leave();
  for (const id of [...tiles.keys()]) removeTile(id);
  for (const track of localStream?.getTracks() || []) track.stop();
  $('local-video').srcObject = null;
  localStream = null;
  setMedia('off', 'Camera off');
  $('chat-input').disabled = true;
  $('chat-send').disabled = true;
  $('chat-peers').textContent = 'you left the room';
  hideBanner();
  setStatus('idle', 'Left');
  document.body.dataset.left = '1';
  $('left-room').textContent = roomName;
  $('left-screen').hidden = false;
  $('rejoin').focus();
}
demo.leave = leave;
$('leave').addEventListener('click', leave);
$('rejoin').addEventListener('click', () => location.reload());

room.addEventListener('signaling', (e) => {
  const s = e.detail;
  document.body.dataset.signaling = s.state;
  note({ type: 'signaling', state: s.state, code: s.code });
  renderSignaling(s);
});

const TRANSPORT_TEXT = { websocket: 'websocket', sse: 'sse + post', 'long-poll': 'long-polling' };

function renderTransport(transport) {
  const el = $('signaling-transport');
  el.dataset.transport = transport || '';
  el.textContent = transport ? TRANSPORT_TEXT[transport] : '…';
  document.body.dataset.transport = transport || '';
  $('status').title = transport ? `signaling: ${TRANSPORT_TEXT[transport]}` : '';
}
room.client.addEventListener('transport', (e) => {
  note({ type: 'transport', transport: e.detail.transport, previous: e.detail.previous });
  renderTransport(e.detail.transport);
});
renderTransport(room.client.transport);

room.client.addEventListener('draining', (e) => {
  note({ type: 'draining', reason: e.detail.reason });
  // Not every call: one relayed by a relay that runs in the signaling process goes with it.
  showBanner('signaling', 'warn', `The signaling server is going away (${e.detail.reason}); the page will reconnect by itself. Direct calls stay up meanwhile.`);
});

let everJoined = false;
let countdown = null;
function renderSignaling(s) {
  clearInterval(countdown);
  countdown = null;
  switch (s.state) {
    case 'connecting':
      setStatus('wait', 'Connecting…');
      break;
    case 'joined':
      everJoined = true;
      hideBanner('signaling');
      renderPeerCount();
      break;
    case 'reconnecting': {
      // The server was reached and refused (a limit, a shutdown): say so, not "unreachable".
      const refused = s.serverError;
      const unreachable = !everJoined && !refused;
      setStatus(unreachable || (refused && !everJoined) ? 'bad' : 'wait',
        unreachable ? 'Signaling unreachable' : refused && !everJoined ? refusalStatus(refused.code) : 'Reconnecting…');
      const tick = () => {
        const secs = Math.max(0, Math.ceil((s.retryAt - Date.now()) / 1000));
        // "Direct": a call relayed by a relay in the signaling process does not stay up.
        const text = refused
          ? `${REFUSAL_TEXT[refused.code] || `The signaling server refused: ${refused.message}`} (${refused.code}). ${everJoined ? 'Reconnecting' : 'Retrying'} in ${secs} s (attempt ${s.attempt})${everJoined ? '; direct calls stay up meanwhile' : ''}.`
          : unreachable
            ? `Can't reach the signaling server (${signalingUrl}). Retrying in ${secs} s (attempt ${s.attempt}).`
            : `Connection to the signaling server lost. Reconnecting in ${secs} s (attempt ${s.attempt}); direct calls stay up meanwhile.`;
        showBanner('signaling', unreachable || (refused && !everJoined) ? 'bad' : 'warn', text, { label: 'Retry now', run: () => room.client.reconnectNow() });
      };
      tick();
      countdown = setInterval(tick, 500);
      break;
    }
    case 'failed': {
      const texts = {
        room_full: `Room “${roomName}” is full. Try another room or ask someone to leave.`,
        unauthorized: 'This server requires a valid access token for the room.',
        forbidden: /origin/i.test(s.message || '')
          ? `This signaling server does not accept pages from ${location.origin} (only the origins it is configured to allow).`
          : 'Your access token does not grant this room.',
        invalid_name: `The server refused the name “${myName}”: use 1 to 64 characters, without control or invisible characters.`,
        invalid_room_id: 'That room name is not valid: use letters, digits, “-”, “_” and “.”.',
        unsupported_version: 'The signaling server does not speak this client\'s protocol version.',
        kicked: 'An operator removed you from this room.',
        room_closed: 'An operator closed this room.',
      };
      const removed = s.code === 'kicked' || s.code === 'room_closed';
      setStatus('bad', s.code === 'room_full' ? 'Room full' : removed ? 'Removed' : 'Cannot join');
      const action = s.code === 'invalid_name'
        ? { label: 'Change name', run: changeName }
        : { label: 'New room', run: () => { location.href = '/'; } };
      showBanner('signaling', 'bad', texts[s.code] || `Cannot join: ${s.message || s.code}`, action);
      break;
    }
    case 'closed':
      setStatus('idle', 'Left');
      document.body.dataset.peers = '0';
      break;
    default:
      break;
  }
}

// Refusals of a server that is reachable (the client retries them), in words.
const REFUSAL_TEXT = {
  too_many_rooms: 'The signaling server has as many rooms as it allows: no new room can open now',
  too_many_sessions: 'The signaling server has as many participants as it allows',
  too_many_connections: 'Too many connections from your network to the signaling server',
  draining: 'The signaling server is shutting down',
  unavailable: 'The signaling server is unavailable for now',
  internal: 'The signaling server had an internal error',
  invalid_message: 'The signaling server did not understand this page’s request',
};
const refusalStatus = (code) => (/^too_many_/.test(code) ? 'Server busy' : 'Signaling refused');

/** After an invalid_name refusal: the join screen again (no `name=`), without the refused name. */
function changeName() {
  try { if (cleanName(localStorage.getItem('demo-name')) === myName) localStorage.removeItem('demo-name'); } catch { /* private mode */ }
  const next = new URLSearchParams(location.search);
  next.delete('name');
  const qs = next.toString();
  location.href = `${location.pathname}${qs ? `?${qs}` : ''}`;
}

function renderPeerCount() {
  if (leaving) return;
  const peers = [...room.peers.values()].filter((p) => alive.has(p.id));
  const connected = peers.filter((p) => p.state === 'connected').length;
  document.body.dataset.peers = String(peers.length);
  document.body.dataset.connected = String(connected);
  $('chat-peers').textContent = peers.length === 0
    ? 'no one else here yet'
    : `with ${peers.map((p) => p.name).join(', ')}`;
  $('conn-empty').hidden = peers.length > 0;
  if (room.client.state !== 'joined') return;
  setStatus('good', peers.length === 0
    ? 'Connected · waiting for others'
    : `Connected · ${connected}/${peers.length} peer${peers.length === 1 ? '' : 's'}`);
}

// --- remote tiles and connection panel ---

const tiles = new Map(); // peer id -> { tile, conn, video }

function addTile(peer) {
  const tile = $('tpl-remote-tile').content.firstElementChild.cloneNode(true);
  tile.dataset.peerId = peer.id;
  tile.dataset.state = peer.state;
  tile.style.setProperty('--peer-color', peerColor(peer.id));
  tile.querySelector('.tile-name').textContent = peer.name;
  const avatar = tile.querySelector('.avatar');
  avatar.textContent = initials(peer.name);
  avatar.style.background = peerColor(peer.id);
  const video = tile.querySelector('video');
  const unmute = tile.querySelector('.unmute');
  unmute.addEventListener('click', () => { video.muted = false; video.play().catch(() => {}); unmute.hidden = true; });
  $('videos').append(tile);

  const conn = $('tpl-conn').content.firstElementChild.cloneNode(true);
  conn.dataset.peerId = peer.id;
  conn.style.setProperty('--peer-color', peerColor(peer.id));
  conn.querySelector('.conn-name').textContent = peer.name;
  $('conn-list').append(conn);

  tiles.set(peer.id, { tile, conn, video, unmute });
  $('videos').dataset.count = String(tiles.size + 1);
  renderPeerState(peer);
}

function removeTile(id) {
  const t = tiles.get(id);
  if (!t) return;
  t.video.srcObject = null;
  t.tile.remove();
  t.conn.remove();
  tiles.delete(id);
  $('videos').dataset.count = String(tiles.size + 1);
}

const STATE_TEXT = {
  connecting: 'Connecting…',
  connected: 'Connected',
  reconnecting: 'Reconnecting…',
  unreachable: 'Unreachable',
  closed: 'Left',
};

function renderPeerState(peer) {
  const t = tiles.get(peer.id);
  if (!t) return;
  t.tile.dataset.state = peer.state;
  t.conn.dataset.state = peer.state;
  t.tile.querySelector('.tile-state').textContent = STATE_TEXT[peer.state] || peer.state;
  t.conn.querySelector('.conn-state').textContent = STATE_TEXT[peer.state] || peer.state;
  const noteEl = t.tile.querySelector('.tile-note');
  noteEl.textContent = peer.state === 'unreachable'
    ? 'No network path to this peer (direct and relay both failed). Still trying…'
    : peer.state === 'connected' ? 'Camera off' : STATE_TEXT[peer.state];
  renderPeerCount();
}

// A peer gets a tile, a place in the counts and a "joined" line once it shows that it is really
// there: it signals to us (every live client offers or answers at once). A session the server
// still lists but nothing drives any more (a page that went away while the server restarted,
// kept until its resume grace ends) never signals, and is not shown.
const alive = new Set();
const announced = new Map(); // peer id -> it was already in the room when we joined
// After a session reset (the server lost our session): the names of the peers we had, which
// come back under new ids without a "left" / "joined" line; those that don't are reported.
let resetNames = [];
let resetTimer = null;
const RESET_RETURN_MS = 20000;

function markAlive(id) {
  const peer = room.peers.get(id);
  if (!peer || alive.has(id) || leaving) return;
  alive.add(id);
  addTile(peer);
  const returning = resetNames.indexOf(peer.name);
  if (returning >= 0) resetNames.splice(returning, 1);
  else systemLine(announced.get(id) ? `${peer.name} is here` : `${peer.name} joined`);
  renderPeerCount();
}
room.client.addEventListener('signal', (e) => markAlive(e.detail.from));

room.addEventListener('peer', (e) => {
  const { peer } = e.detail;
  note({ type: 'peer', id: peer.id, name: peer.name, polite: peer.polite });
  announced.set(peer.id, !!room.client.session?.peers?.some((p) => p.id === peer.id));
});
room.addEventListener('peer-removed', (e) => {
  const { peer, reason } = e.detail;
  const wasShown = alive.delete(peer.id);
  announced.delete(peer.id);
  removeTile(peer.id);
  canvas.removePeer(peer.id);
  note({ type: 'peer-removed', id: peer.id, reason });
  if (String(reason).startsWith('session reset')) {
    // Not a departure: the server forgot our session (see the 'session-reset' line).
    if (wasShown) resetNames.push(peer.name);
  } else if (wasShown && !leaving && (reason !== 'left' || room.client.state === 'joined')) {
    systemLine(`${peer.name} left${reason && reason !== 'left' ? ` (${reason})` : ''}`);
  }
  renderPeerCount();
});
room.client.addEventListener('session-reset', (e) => {
  note({ type: 'session-reset', reason: e.detail.reason });
  if (leaving) return;
  // One plain sentence per reset, however many peers it took down.
  systemLine('The signaling server lost this session (it restarted, or we were away too long), so the page joined the room again: the others reappear as they reconnect.');
  clearTimeout(resetTimer);
  resetTimer = setTimeout(() => {
    for (const name of resetNames) systemLine(`${name} left`);
    resetNames = [];
  }, RESET_RETURN_MS);
});
room.addEventListener('peer-state', (e) => {
  note({ type: 'peer-state', id: e.detail.peer.id, state: e.detail.state });
  if (e.detail.state === 'connected') markAlive(e.detail.peer.id);
  renderPeerState(e.detail.peer);
});
const watchedTracks = new WeakSet();
room.addEventListener('track', (e) => {
  const { peer, track } = e.detail;
  const t = tiles.get(peer.id);
  if (!t) return;
  // One stream per tile with the peer's latest track of each kind: a track added later (a
  // camera turned on mid-call) may come in a stream of its own, and showing that stream alone
  // would silence the peer.
  t.stream ||= new MediaStream();
  for (const old of t.stream.getTracks()) if (old.kind === track.kind && old !== track) t.stream.removeTrack(old);
  if (!t.stream.getTracks().includes(track)) t.stream.addTrack(track);
  if (t.video.srcObject !== t.stream) t.video.srcObject = t.stream;
  if (track.kind === 'video') {
    // A remote track starts muted and unmutes when its first frames arrive: only then is
    // there a picture to show instead of the placeholder. It is muted again while the peer's
    // camera is off (its side stops sending video).
    t.tile.classList.toggle('has-video', !track.muted);
    if (!watchedTracks.has(track)) {
      watchedTracks.add(track);
      track.addEventListener('mute', () => tiles.get(peer.id)?.tile.classList.remove('has-video'));
      track.addEventListener('unmute', () => tiles.get(peer.id)?.tile.classList.add('has-video'));
    }
  }
  t.video.play().catch(() => {
    // Autoplay with sound needs a user gesture in some browsers: play muted, offer to unmute.
    t.video.muted = true;
    t.video.play().catch(() => {});
    t.unmute.hidden = false;
  });
});
room.addEventListener('channel-open', (e) => {
  const { peer, label } = e.detail;
  note({ type: 'channel-open', id: peer.id, label });
  if (label === 'canvas') canvas.syncTo(peer.id);
  $('chat-input').placeholder = 'Message everyone…';
});
room.addEventListener('message', (e) => {
  const { peer, label, data } = e.detail;
  if (label === 'chat') {
    const text = typeof data === 'string' ? data : new TextDecoder().decode(data);
    addChat({ from: peer.id, name: peer.name, text, mine: false });
  } else if (label === 'canvas' || label === 'cursor') {
    canvas.receive(label, peer, data);
  }
});
room.addEventListener('ice-restart', (e) => {
  const { peer, reason } = e.detail;
  note({ type: 'ice-restart', id: peer.id, reason });
  if (reason === 'relay moved') systemLine(`The relay changed: reconnecting to ${peer.name} through the new one`);
});
/** TURN errors shown in the chat (`URL CODE`): once each, whatever the number of peers. */
const turnErrorsShown = new Set();
room.addEventListener('turn-error', (e) => {
  const { url, code, text } = e.detail;
  note({ type: 'turn-error', url, code, text });
  if (turnErrorsShown.has(`${url} ${code}`)) return;
  turnErrorsShown.add(`${url} ${code}`);
  // What the user or the operator can act on; others (a stale nonce the browser retries) are
  // only logged.
  if (code === 401) systemLine(`The relay refused this server's TURN credentials (${url}): the signaling server and the relay need the same TURN secret`);
  else if ([403, 486, 508].includes(code)) systemLine(`The relay refused a TURN allocation (${url}: ${code} ${text})`);
});
room.addEventListener('log', (e) => {
  note({ type: 'log', level: e.detail.level, message: e.detail.message });
  if (e.detail.level === 'warn') console.warn(e.detail.message);
});

// --- chat ---

function sendChat(text) {
  const trimmed = String(text).trim();
  if (!trimmed) return 0;
  const sent = room.send('chat', trimmed);
  addChat({ from: room.peerId, name: myName, text: trimmed, mine: true, delivered: sent });
  return sent;
}

$('chat-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const input = $('chat-input');
  sendChat(input.value);
  input.value = '';
  input.focus();
});

const chatLog = new ChatLog($('chat-log'));

function addChat(m) {
  demo.chat.push({ ...m, at: Date.now() });
  if (!m.mine && chatHidden()) { unread += 1; renderUnread(); }
  let note;
  if (m.mine && m.delivered === 0) note = room.peers.size ? 'not delivered: no open connection yet' : 'no one else is here yet';
  chatLog.message({ name: m.mine ? 'You' : m.name, text: m.text, mine: m.mine, color: m.mine ? 'var(--accent)' : peerColor(m.from), note });
}

function systemLine(text) { chatLog.system(text); }

// --- connection panel: getStats once a second ---

async function refreshStats() {
  for (const peer of room.peers.values()) {
    const t = tiles.get(peer.id);
    if (!t) continue;
    let info;
    try { info = await peer.connectionInfo(); } catch { continue; }
    if (!info) continue;
    const d = describeConnection(info);
    if (room.relayOnly && info.localType !== 'relay') {
      // "Relay only" is on but this connection is not (yet) on the relay: never show it as
      // direct next to the switch.
      Object.assign(d, { path: 'switching to the relay…', pathKey: 'switching', route: 'switching', relay: '–', relayKey: '' });
    }
    const c = t.conn;
    c.querySelector('.c-path').textContent = d.path;
    c.querySelector('.c-proto').textContent = d.protocol;
    c.querySelector('.c-rtt').textContent = d.rtt;
    c.querySelector('.c-bytes').textContent = d.bytes;
    c.querySelector('.c-relay').textContent = d.relay;
    c.dataset.path = d.pathKey;
    c.dataset.relay = d.relayKey;
    c.title = d.addresses;
    t.tile.dataset.path = d.route;
  }
}
setInterval(refreshStats, 1000);

// --- the join screen ---

/** Shows the join screen; resolves once the user pressed Join (name and devices chosen). */
async function prejoin() {
  document.body.dataset.prejoin = '1';
  $('prejoin').hidden = false;
  $('prejoin-room').textContent = roomName;
  $('prejoin-name').value = myName;
  setStatus('idle', 'Not joined yet');
  let preview = null;
  const stopPreview = () => { for (const t of preview?.getTracks() || []) t.stop(); preview = null; $('preview-video').srcObject = null; };
  const renderAvatar = () => {
    const name = $('prejoin-name').value.trim() || '?';
    $('preview-avatar').textContent = initials(name);
    $('preview-avatar').style.background = peerColor(name);
  };
  const fillDevices = async () => {
    let devices = [];
    try { devices = await navigator.mediaDevices.enumerateDevices(); } catch { /* none */ }
    for (const [kind, id] of [['videoinput', 'prejoin-camera'], ['audioinput', 'prejoin-mic']]) {
      const select = $(id);
      const keep = select.value;
      select.replaceChildren(...devices.filter((d) => d.kind === kind).map((d, i) => new Option(d.label || `${kind === 'videoinput' ? 'Camera' : 'Microphone'} ${i + 1}`, d.deviceId)));
      if ([...select.options].some((o) => o.value === keep)) select.value = keep;
      select.disabled = select.options.length === 0;
    }
  };
  const startPreview = async () => {
    stopPreview();
    choice.camera = $('prejoin-cam-on').checked;
    choice.cameraId = $('prejoin-camera').value;
    $('preview-tile').classList.remove('has-video');
    $('preview-note').textContent = choice.camera ? 'Starting camera…' : 'Camera off';
    if (!choice.camera || !navigator.mediaDevices?.getUserMedia) return;
    try {
      preview = await navigator.mediaDevices.getUserMedia({ video: videoConstraints() });
    } catch (err) {
      $('preview-note').textContent = err.name === 'NotAllowedError' ? 'Camera blocked' : 'No camera found';
      return;
    }
    if (!$('prejoin-cam-on').checked || document.body.dataset.prejoin !== '1') { stopPreview(); return; }
    $('preview-video').srcObject = preview;
    $('preview-video').play().catch(() => {});
    $('preview-tile').classList.add('has-video');
    await fillDevices(); // labels are known once a device was granted
  };
  // A name the server would refuse (spaces only, control or invisible characters) is refused
  // here, with the reason, rather than by the server after Join.
  const checkName = () => {
    const problem = nameProblem($('prejoin-name').value);
    $('prejoin-name').setCustomValidity(problem || '');
    $('prejoin-name-error').textContent = problem || '';
    $('prejoin-name-error').hidden = !problem;
  };
  renderAvatar();
  checkName();
  $('prejoin-name').addEventListener('input', () => { renderAvatar(); checkName(); });
  $('prejoin-cam-on').addEventListener('change', startPreview);
  $('prejoin-camera').addEventListener('change', startPreview);
  await fillDevices();
  startPreview();
  $('prejoin-name').focus();
  await new Promise((resolve) => {
    $('prejoin-form').addEventListener('submit', (e) => { e.preventDefault(); resolve(); }, { once: true });
  });
  stopPreview();
  const name = cleanName($('prejoin-name').value) || myName;
  try { localStorage.setItem('demo-name', name); } catch { /* private mode */ }
  myName = name;
  demo.name = name;
  room.client.options.name = name;
  $('local-name').textContent = `${name} (you)`;
  $('local-avatar').textContent = initials(name);
  $('local-avatar').style.background = peerColor(name);
  choice.camera = $('prejoin-cam-on').checked;
  choice.mic = $('prejoin-mic-on').checked;
  choice.cameraId = $('prejoin-camera').value;
  choice.micId = $('prejoin-mic').value;
  note({ type: 'prejoin', name, camera: choice.camera, mic: choice.mic });
  $('prejoin').hidden = true;
  delete document.body.dataset.prejoin;
}

// --- start ---

document.body.dataset.room = roomName;
if (rejectedRoom && !roomName) {
  // Nothing of the name could be kept: say so and stay out of every room (never a random one).
  setStatus('bad', 'No such room');
  document.body.dataset.roomRefused = '1';
  showBanner('room', 'bad', `“${rejectedRoom.asked.slice(0, 80)}” cannot be used as a room name: a room name needs letters or digits (up to 64 of letters, digits, “-”, “_” and “.”). Ask for a new link, or start a new room.`, {
    label: 'New room', run: () => { location.href = '/'; },
  });
  await new Promise(() => {}); // the page stays on this message
}
if (rejectedRoom) {
  showBanner('room', 'info', `“${rejectedRoom.asked.slice(0, 80)}” is not a valid room name (up to 64 letters, digits, “-”, “_” and “.”): everyone with this link meets in “${roomName}”.`);
}
// The join screen, unless the URL names the user (`?name=`, as tests and scripted links do) or
// the page runs without media (`media=0`).
if (!params.get('name') && params.get('media') !== '0') await prejoin();

// Join once the camera is decided (or after 3 s, e.g. while a permission prompt is open): the
// first offer then carries the tracks, instead of a second negotiation right after the first.
const mediaDecided = startMedia();
await Promise.race([mediaDecided, new Promise((r) => setTimeout(r, 3000))]);
// Leave pressed meanwhile (e.g. while the permission prompt was open): the page is done.
if (!leaving) {
  room.join().then(
    (session) => note({ type: 'joined', peerId: session.peer_id }),
    (err) => note({ type: 'join-failed', code: err.code, message: err.message }),
  );
}
