// shared-canvas.js: the demo's shared drawing board.
//
// The board has a fixed 16:9 logical space: points travel normalised to [0, 1] so every screen
// size draws the same picture. Strokes go peer to peer as JSON on a reliable, unordered data
// channel (no head-of-line blocking; segments carry their offset and are put back in order);
// cursors on an unreliable unordered one. The server never sees any of it.
//
// Messages on the `canvas` channel:
//   { t: 's', id, o, c: '#rrggbb', w: width/1000 of the board, p: [x0, y0, x1, y1, ...], end? }
//       a stroke segment: `o` is the index in the stroke's flat point list where `p` starts;
//       the segment with o = 0 carries the colour and width
//   { t: 'sync', strokes: [{ id, c, w, p }] }   a newcomer gets every stroke the sender drew
//   { t: 'clear' }                             clear the board for everyone
// Messages on the `cursor` channel:  { x, y } or { gone: true }

const MAX_POINTS_PER_SEGMENT = 64;
const SYNC_BATCH_BYTES = 48 * 1024;
const MAX_STROKES = 4000;

export class SharedCanvas {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {HTMLElement} cursorLayer  positioned over the canvas, holds remote cursors
   * @param {{ send: (label: string, data: string, to?: string) => void }} transport
   */
  constructor(canvas, cursorLayer, transport) {
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d');
    this.cursorLayer = cursorLayer;
    this.transport = transport;
    this.color = '#4f9dff';
    this.width = 4;
    /** id -> { c, w, p: number[], mine: boolean } in drawing order */
    this.strokes = new Map();
    this.cursors = new Map();
    this._strokeSeq = 0;
    this._prefix = Math.random().toString(36).slice(2, 8);
    this._active = null;
    this._pendingPoints = [];
    this._held = new Map(); // stroke id -> segments that arrived before their predecessors
    this._flushTimer = null;
    this._lastCursorSent = 0;
    this.onChange = () => {};
    this._bind();
    this._resize();
    new ResizeObserver(() => this._resize()).observe(canvas);
  }

  /** How many strokes are on the board (for tests). */
  get strokeCount() { return this.strokes.size; }

  /** Draws a stroke from normalised points as if the user drew it (tests and demos). */
  drawLocalStroke(points, color = this.color) {
    const id = this._newId();
    const flat = points.flatMap(([x, y]) => [round(x), round(y)]);
    this._addStroke(id, { c: color, w: this.width, p: flat, mine: true });
    this._sendStroke({ t: 's', id, o: 0, c: color, w: this.width, p: flat, end: true });
    return id;
  }

  clear(broadcast = true) {
    this.strokes.clear();
    this._held.clear();
    this._redraw();
    if (broadcast) this.transport.send('canvas', JSON.stringify({ t: 'clear' }));
    this.onChange();
  }

  /** Sends our own strokes to a peer whose canvas channel just opened. */
  syncTo(peerId) {
    let batch = [];
    let bytes = 0;
    const flush = () => {
      if (batch.length) this.transport.send('canvas', JSON.stringify({ t: 'sync', strokes: batch }), peerId);
      batch = [];
      bytes = 0;
    };
    for (const [id, s] of this.strokes) {
      if (!s.mine) continue;
      const item = { id, c: s.c, w: s.w, p: s.p };
      const size = 40 + s.p.length * 7;
      if (bytes + size > SYNC_BATCH_BYTES) flush();
      batch.push(item);
      bytes += size;
    }
    flush();
  }

  /** A message from the `canvas` or `cursor` channel of a peer. */
  receive(label, peer, raw) {
    let msg;
    try {
      msg = JSON.parse(typeof raw === 'string' ? raw : new TextDecoder().decode(raw));
    } catch {
      return;
    }
    if (label === 'cursor') { this._moveCursor(peer, msg); return; }
    if (msg.t === 's' && typeof msg.id === 'string' && Array.isArray(msg.p)) {
      this._segment(peer, msg);
      this.onChange();
    } else if (msg.t === 'sync' && Array.isArray(msg.strokes)) {
      for (const s of msg.strokes) {
        if (typeof s.id !== 'string' || !Array.isArray(s.p) || this.strokes.has(s.id)) continue;
        this._addStroke(s.id, { c: safeColor(s.c), w: clampWidth(s.w), p: s.p.filter(Number.isFinite), mine: false, peer: peer.id });
      }
      this.onChange();
    } else if (msg.t === 'clear') {
      this.clear(false);
    }
  }

  /** Applies a stroke segment, holding back segments that arrive before the ones they follow. */
  _segment(peer, msg) {
    const offset = Number.isInteger(msg.o) ? msg.o : null;
    let stroke = this.strokes.get(msg.id);
    if (!stroke && offset !== null && offset > 0) {
      this._hold(msg);
      return;
    }
    if (!stroke) {
      stroke = { c: safeColor(msg.c), w: clampWidth(msg.w), p: [], mine: false, peer: peer.id };
      this.strokes.set(msg.id, stroke);
      if (this.strokes.size > MAX_STROKES) this.strokes.delete(this.strokes.keys().next().value);
    }
    if (offset !== null && offset > stroke.p.length) { this._hold(msg); return; }
    if (offset !== null && offset < stroke.p.length) return; // a duplicate
    let next = msg;
    while (next) {
      const from = stroke.p.length;
      stroke.p.push(...next.p.filter(Number.isFinite));
      this._drawPath(stroke, Math.max(0, from - 2));
      const pts = next.p;
      this._moveCursorTo(peer, pts[pts.length - 2], pts[pts.length - 1]);
      const waiting = this._held.get(msg.id);
      const i = waiting ? waiting.findIndex((m) => m.o === stroke.p.length) : -1;
      next = i >= 0 ? waiting.splice(i, 1)[0] : null;
      if (waiting && !waiting.length) this._held.delete(msg.id);
    }
  }

  _hold(msg) {
    if (!this._held.has(msg.id)) {
      this._held.set(msg.id, []);
      if (this._held.size > 64) this._held.delete(this._held.keys().next().value);
    }
    const list = this._held.get(msg.id);
    if (list.length < 256) list.push(msg);
  }

  removePeer(peerId) {
    const el = this.cursors.get(peerId);
    if (el) { el.remove(); this.cursors.delete(peerId); }
  }

  // --- local input ---

  _bind() {
    const c = this.canvas;
    c.style.touchAction = 'none';
    c.addEventListener('pointerdown', (e) => {
      c.setPointerCapture(e.pointerId);
      const [x, y] = this._norm(e);
      const id = this._newId();
      this._active = id;
      this._addStroke(id, { c: this.color, w: this.width, p: [x, y], mine: true });
      this._pendingPoints = [x, y];
      this._flush(false);
    });
    c.addEventListener('pointermove', (e) => {
      const [x, y] = this._norm(e);
      this._sendCursor(x, y);
      if (!this._active) return;
      const s = this.strokes.get(this._active);
      if (!s) return;
      s.p.push(x, y);
      this._drawPath(s, s.p.length - 4);
      this._pendingPoints.push(x, y);
      if (this._pendingPoints.length >= MAX_POINTS_PER_SEGMENT * 2) this._flush(false);
      else if (!this._flushTimer) this._flushTimer = setTimeout(() => this._flush(false), 30);
    });
    const end = () => {
      if (!this._active) return;
      this._flush(true);
      this._active = null;
      this.onChange();
    };
    c.addEventListener('pointerup', end);
    c.addEventListener('pointercancel', end);
    c.addEventListener('pointerleave', () => {
      if (!this._active) this.transport.send('cursor', JSON.stringify({ gone: true }));
    });
  }

  _flush(end) {
    clearTimeout(this._flushTimer);
    this._flushTimer = null;
    if (!this._active) return;
    const s = this.strokes.get(this._active);
    if (!s) return;
    const msg = { t: 's', id: this._active, o: s.p.length - this._pendingPoints.length, p: this._pendingPoints };
    if (this._pendingPoints.length === s.p.length) { msg.c = s.c; msg.w = s.w; } // first segment
    if (end) msg.end = true;
    this._pendingPoints = [];
    if (msg.p.length || end) this._sendStroke(msg);
  }

  _sendStroke(msg) { this.transport.send('canvas', JSON.stringify(msg)); }

  _sendCursor(x, y) {
    const now = performance.now();
    if (now - this._lastCursorSent < 33) return;
    this._lastCursorSent = now;
    this.transport.send('cursor', JSON.stringify({ x, y }));
  }

  // --- drawing ---

  _addStroke(id, stroke) {
    this.strokes.set(id, stroke);
    if (this.strokes.size > MAX_STROKES) this.strokes.delete(this.strokes.keys().next().value);
    this._drawPath(stroke, 0);
  }

  _drawPath(s, fromIndex) {
    const { ctx } = this;
    const W = this.canvas.width;
    const H = this.canvas.height;
    const p = s.p;
    if (p.length < 2) return;
    ctx.strokeStyle = s.c;
    ctx.fillStyle = s.c;
    ctx.lineWidth = Math.max(1, (s.w / 1000) * W);
    ctx.lineCap = 'round';
    ctx.lineJoin = 'round';
    let i = Math.max(0, fromIndex - (fromIndex % 2));
    if (p.length === 2) {
      ctx.beginPath();
      ctx.arc(p[0] * W, p[1] * H, ctx.lineWidth / 2, 0, Math.PI * 2);
      ctx.fill();
      return;
    }
    ctx.beginPath();
    ctx.moveTo(p[i] * W, p[i + 1] * H);
    for (i += 2; i + 1 < p.length; i += 2) ctx.lineTo(p[i] * W, p[i + 1] * H);
    ctx.stroke();
  }

  _redraw() {
    this.ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    for (const s of this.strokes.values()) this._drawPath(s, 0);
  }

  _resize() {
    const rect = this.canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(rect.width * dpr));
    const h = Math.max(1, Math.round(rect.height * dpr));
    if (w === this.canvas.width && h === this.canvas.height) return;
    this.canvas.width = w;
    this.canvas.height = h;
    this._redraw();
  }

  _norm(e) {
    const r = this.canvas.getBoundingClientRect();
    return [round((e.clientX - r.left) / r.width), round((e.clientY - r.top) / r.height)];
  }

  _newId() { return `${this._prefix}-${++this._strokeSeq}`; }

  // --- remote cursors ---

  _moveCursor(peer, msg) {
    if (msg.gone) { this._cursorEl(peer).dataset.hidden = '1'; return; }
    this._moveCursorTo(peer, msg.x, msg.y);
  }

  _moveCursorTo(peer, x, y) {
    if (!Number.isFinite(x) || !Number.isFinite(y)) return;
    const el = this._cursorEl(peer);
    el.style.left = `${clamp01(x) * 100}%`;
    el.style.top = `${clamp01(y) * 100}%`;
    el.classList.toggle('flip', x > 0.8);
    delete el.dataset.hidden;
    clearTimeout(el._hide);
    el._hide = setTimeout(() => { el.dataset.hidden = '1'; }, 6000);
  }

  _cursorEl(peer) {
    let el = this.cursors.get(peer.id);
    if (!el) {
      el = document.createElement('div');
      el.className = 'cursor';
      el.style.setProperty('--peer-color', peerColor(peer.id));
      const label = document.createElement('span');
      label.textContent = peer.name;
      el.append(label);
      this.cursorLayer.append(el);
      this.cursors.set(peer.id, el);
    }
    return el;
  }
}

/** A stable, pleasant colour for a peer id. */
export function peerColor(id) {
  let h = 0;
  for (const ch of String(id)) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return `hsl(${h % 360} 80% 62%)`;
}

const round = (v) => Math.round(clamp01(v) * 10000) / 10000;
const clamp01 = (v) => Math.min(1, Math.max(0, v));
const clampWidth = (w) => (Number.isFinite(w) ? Math.min(40, Math.max(0.5, w)) : 4);
const safeColor = (c) => (typeof c === 'string' && /^#[0-9a-f]{6}$/i.test(c) ? c : '#ffffff');
