// room-url.js: which room and name the page uses, from its URL.
//
// `/r/<room>` or `?room=<room>`; a missing room becomes a generated one (`calm-otter-4821`)
// written back into the address bar as `/r/<room>`, so the URL is the invite. An invalid room
// name is normalised (`normaliseRoom`), the same way for everyone who opens that link; one
// with nothing left to keep (`!!!`) is refused, never replaced by a random room.

// `.` and `..` are refused too: a browser resolves them out of `/r/..` and `/ws/..`.
export const ROOM_RE = /^(?!\.\.?$)[A-Za-z0-9_.-]{1,64}$/;
const ADJ = ['amber', 'brisk', 'calm', 'dapper', 'eager', 'fuzzy', 'gentle', 'hazel', 'jolly', 'lucky', 'mellow', 'nimble', 'plucky', 'quiet', 'rosy', 'sunny', 'tidy', 'witty'];
const NOUN = ['otter', 'falcon', 'maple', 'comet', 'badger', 'lynx', 'heron', 'cedar', 'puffin', 'koala', 'walrus', 'orca', 'finch', 'tapir', 'yak', 'panda'];
const pick = (a) => a[Math.floor(Math.random() * a.length)];
const cap = (s) => s[0].toUpperCase() + s.slice(1);

export const ROOM_MAX = 64;
// Latin letters that Unicode does not decompose into a base letter and a mark.
const LATIN = { ß: 'ss', æ: 'ae', œ: 'oe', ø: 'o', ł: 'l', đ: 'd', ð: 'd', þ: 'th', ı: 'i' };

/**
 * A valid room name for `name`, the same in every browser: accents dropped (`café` -> `cafe`),
 * lower case, runs of spaces and other separators -> `-`, letters and digits of other scripts
 * -> `u<hex code point>`, anything else dropped, at most 64 characters. Null when nothing is
 * left. A name that is already valid is returned as it is.
 */
export function normaliseRoom(name) {
  const raw = String(name ?? '');
  if (ROOM_RE.test(raw)) return raw;
  let out = '';
  for (const ch of raw.normalize('NFKD').replace(/\p{M}/gu, '').toLowerCase()) {
    if (/[a-z0-9_.-]/.test(ch)) out += ch;
    else if (LATIN[ch]) out += LATIN[ch];
    else if (/[\p{L}\p{N}]/u.test(ch)) out += `u${ch.codePointAt(0).toString(16)}`;
    else if (/[\s/\\+,:;|]/u.test(ch)) out += '-';
    // other punctuation and symbols: dropped
  }
  out = out.replace(/-{2,}/g, '-').replace(/^[-.]+|[-.]+$/g, '').slice(0, ROOM_MAX).replace(/[-.]+$/, '');
  return ROOM_RE.test(out) ? out : null;
}

/**
 * What the URL asks for, when it is not a valid room name: `{ asked, room }` with the
 * normalised name (`room` null when it cannot be normalised); null for a valid or missing room.
 */
export function invalidRoomInUrl(params) {
  const candidate = roomInUrl(params);
  return candidate && !ROOM_RE.test(candidate) ? { asked: candidate, room: normaliseRoom(candidate) } : null;
}

function roomInUrl(params) {
  const m = /^\/r\/([^/]+)\/?$/.exec(location.pathname);
  let fromPath = null;
  try { fromPath = m ? decodeURIComponent(m[1]) : null; } catch { fromPath = m[1]; }
  return fromPath || params.get('room');
}

/**
 * The room named by the URL (normalised if need be), or a new one when the URL names none (the
 * address bar then shows `/r/<room>`); null when the URL names a room that cannot be normalised.
 */
export function roomFromUrl(params) {
  const candidate = roomInUrl(params);
  if (candidate && ROOM_RE.test(candidate)) return candidate;
  const room = candidate ? normaliseRoom(candidate) : `${pick(ADJ)}-${pick(NOUN)}-${Math.floor(1000 + Math.random() * 9000)}`;
  if (!room) return null;
  const rest = new URLSearchParams(params);
  rest.delete('room');
  const qs = rest.toString();
  history.replaceState(null, '', `/r/${room}${qs ? `?${qs}` : ''}`);
  return room;
}

export const NAME_MAX = 64;
// What the server refuses in a name (docs/protocol.md, `join`): besides control characters, the
// invisible ones that change how text displays (direction marks and overrides, zero-width
// spaces, blank fillers, line separators). The zero-width joiners U+200C and U+200D are allowed.
const INVISIBLE = /[\u00AD\u034F\u061C\u115F\u1160\u180E\u3164\uFFA0\u200B\u200E\u200F\u2028-\u202E\u2060-\u2064\u2066-\u2069\uFEFF]/gu;
const CONTROL = /\p{Cc}+/gu;
// A lone UTF-16 surrogate cannot be sent as JSON text the server accepts.
const LONE_SURROGATE = /\p{Cs}/gu;

/** Why the server would refuse `name` as it is, or null: for the join form's message. */
export function nameProblem(name) {
  const s = String(name ?? '');
  if (!s.trim()) return 'Enter a name (spaces alone are not a name).';
  if (new RegExp(CONTROL.source, 'u').test(s) || new RegExp(LONE_SURROGATE.source, 'u').test(s)) return 'A name cannot contain line breaks, tabs or other control characters.';
  if (new RegExp(INVISIBLE.source, 'u').test(s)) return 'A name cannot contain invisible characters (zero-width spaces, text direction marks and the like).';
  if ([...s.trim()].length > NAME_MAX) return `A name has at most ${NAME_MAX} characters.`;
  return null;
}

/**
 * `name` as the server takes it (1 to 64 characters, no control or invisible formatting
 * characters): control characters become spaces, invisible ones are dropped, the ends trimmed,
 * cut to 64 characters by code point (the server counts characters; cutting UTF-16 units could
 * split an emoji into a lone surrogate, which no JSON the server accepts can carry). '' when
 * nothing is left.
 */
export function cleanName(name) {
  const s = String(name ?? '').replace(LONE_SURROGATE, '').replace(CONTROL, ' ').replace(INVISIBLE, '').trim();
  return [...s].slice(0, NAME_MAX).join('').trim();
}

/** `?name=`, else the name this browser used before, else a new friendly one (remembered); cleaned (`cleanName`). */
export function displayName(params) {
  const fromUrl = cleanName(params.get('name'));
  if (fromUrl) return fromUrl;
  let saved = null;
  try { saved = cleanName(localStorage.getItem('demo-name')); } catch { /* private mode */ }
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
