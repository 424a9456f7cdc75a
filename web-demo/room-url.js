// room-url.js: which room and name the page uses, from its URL.
//
// `/r/<room>` or `?room=<room>`; a missing or invalid room becomes a generated one
// (`calm-otter-4821`) written back into the address bar as `/r/<room>`, so the URL is the invite.

export const ROOM_RE = /^[A-Za-z0-9_.-]{1,64}$/;
const ADJ = ['amber', 'brisk', 'calm', 'dapper', 'eager', 'fuzzy', 'gentle', 'hazel', 'jolly', 'lucky', 'mellow', 'nimble', 'plucky', 'quiet', 'rosy', 'sunny', 'tidy', 'witty'];
const NOUN = ['otter', 'falcon', 'maple', 'comet', 'badger', 'lynx', 'heron', 'cedar', 'puffin', 'koala', 'walrus', 'orca', 'finch', 'tapir', 'yak', 'panda'];
const pick = (a) => a[Math.floor(Math.random() * a.length)];
const cap = (s) => s[0].toUpperCase() + s.slice(1);

/** The room asked for in the URL that is not a valid room name, if any. */
export function invalidRoomInUrl(params) {
  const candidate = roomInUrl(params);
  return candidate && !ROOM_RE.test(candidate) ? candidate : null;
}

function roomInUrl(params) {
  const m = /^\/r\/([^/]+)\/?$/.exec(location.pathname);
  let fromPath = null;
  try { fromPath = m ? decodeURIComponent(m[1]) : null; } catch { fromPath = m[1]; }
  return fromPath || params.get('room');
}

/** The room named by the URL, or a new one (then the address bar shows `/r/<room>`). */
export function roomFromUrl(params) {
  const candidate = roomInUrl(params);
  if (candidate && ROOM_RE.test(candidate)) return candidate;
  const room = `${pick(ADJ)}-${pick(NOUN)}-${Math.floor(1000 + Math.random() * 9000)}`;
  const rest = new URLSearchParams(params);
  rest.delete('room');
  const qs = rest.toString();
  history.replaceState(null, '', `/r/${room}${qs ? `?${qs}` : ''}`);
  return room;
}

/** `?name=`, else the name this browser used before, else a new friendly one (remembered). */
export function displayName(params) {
  const fromUrl = params.get('name');
  if (fromUrl) return fromUrl.slice(0, 64);
  let saved = null;
  try { saved = localStorage.getItem('demo-name'); } catch { /* private mode */ }
  if (saved) return saved;
  const n = `${cap(pick(ADJ))} ${cap(pick(NOUN))}`;
  try { localStorage.setItem('demo-name', n); } catch { /* ignore */ }
  return n;
}

/** Up to two initials for an avatar. */
export function initials(name) {
  const parts = String(name).trim().split(/\s+/);
  return ((parts[0]?.[0] || '?') + (parts[1]?.[0] || '')).toUpperCase();
}
