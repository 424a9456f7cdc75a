// run.mjs: browser tests of the web demo and its JS client, in Debian's headless Chromium.
//
//   node tests/browser/run.mjs [name-filter...]
//
// Starts the real `signaling` binary (and, for the relay tests, the real `relay`, a fleet of them
// in a `redis-server` for the relay fleet tests; for the interop
// test, the `peer` CLI; for the proxy test, Debian's `squid`), opens the demo in separate browser contexts (separate users), drives it
// through the page's test hooks (window.__demo, data attributes) and checks what the other side
// sees. Prints one line per test and a final `N passed, N failed`; exits non-zero on failure.
// Screenshots go to tests/artifacts/ (failures too, as fail-<test>-<page>.png).
//
// Environment:
//   SIGNALING_BIN  signaling binary (default $CARGO_TARGET_DIR/debug/signaling, target/ if unset)
//   RELAY_BIN      relay binary (default $CARGO_TARGET_DIR/debug/relay)
//   PEER_BIN       peer CLI (default $CARGO_TARGET_DIR/debug/peer)
//   CHROMIUM_BIN   browser (default /usr/bin/chromium)
//   SQUID_BIN      forward proxy of the proxy test (default /usr/sbin/squid, else squid on PATH)
//   ARTIFACTS_DIR  screenshots (default tests/artifacts)
//   BROWSER_TESTS  comma-separated substrings: run only matching tests (same as arguments)
//   BROWSER_TEST_TIMEOUT_MS  bound of one test (default 90000)

import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import {
  ARTIFACTS, Proc, freePort, launchBrowser, requireBin, startSignaling, stunBinding, waitUntil,
} from './harness.mjs';

const TEST_TIMEOUT_MS = Number(process.env.BROWSER_TEST_TIMEOUT_MS) || 90000;
const WAIT = 20000; // default bound of one wait inside a test

// --- page helpers ---

class PeerPage {
  constructor(name, page) {
    this.name = name;
    this.context = page.context();
    this.page = page;
    this.logs = [];
    page.on('console', (m) => this._log(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => this._log(`PAGE ERROR: ${e.message}`));
    this.pageErrors = [];
    page.on('pageerror', (e) => this.pageErrors.push(e.message));
  }

  _log(line) {
    this.logs.push(line);
    if (this.logs.length > 400) this.logs.shift();
  }

  eval(fn, arg) { return this.page.evaluate(fn, arg); }

  waitFor(fn, arg, what, timeout = WAIT) {
    return this.page.waitForFunction(fn, arg, { timeout, polling: 100 }).catch((err) => {
      throw new Error(`${this.name}: timeout waiting for ${what} (${err.message.split('\n')[0]})`);
    });
  }

  joined() {
    return this.waitFor(() => document.body.dataset.signaling === 'joined', null, 'signaling joined');
  }

  /** Waits until `n` peers are connected with chat and canvas channels open. */
  connected(n = 1, timeout = WAIT) {
    return this.waitFor((k) => window.__demo.peers().filter((p) => p.state === 'connected'
      && p.channels.includes('chat') && p.channels.includes('canvas')).length >= k, n, `${n} connected peer(s) with open channels`, timeout);
  }

  chatFrom(text, timeout = WAIT) {
    return this.waitFor((t) => window.__demo.chat.some((m) => !m.mine && m.text === t), text, `chat message "${text}"`, timeout);
  }

  peerId() { return this.eval(() => window.__demo.room.peerId); }

  /** Sends `text` on the chat channel. */
  say(text) { return this.eval((m) => window.__demo.sendChat(m), text); }

  /** Sends `text` on the chat channel and waits until `other` has received it. */
  async sayTo(other, text) {
    await this.say(text);
    await other.chatFrom(text);
  }

  /** Restarts ICE with the (first) remote peer; `reason` goes to the page's log. */
  async restartIce(reason) {
    this.restartedAt = await this.eval(() => performance.now());
    return this.eval((r) => [...window.__demo.room.peers.values()][0].restartIce(r), reason);
  }

  /**
   * Waits until the last `restartIce` was answered: an answer went either way after it (the
   * restart's offer runs once the negotiation before it is done), and the (first) remote peer's
   * negotiation is stable and connected. Right after `restartIce` the state is still stable: the
   * offer comes later.
   */
  iceRestartAnswered(what) {
    return this.waitFor((since) => {
      const p = [...window.__demo.room.peers.values()][0];
      const answered = window.__demo.events.some((e) => e.t >= since && e.type === 'log' && /^(<- answer from|-> answer to) /.test(e.message));
      return answered && p.pc.signalingState === 'stable' && p.state === 'connected';
    }, Math.floor(this.restartedAt ?? 0), what);
  }

  /** Drops the signaling link, keeps it down for `ms` and waits until the page shows it is reconnecting. */
  async dropSignaling(ms) {
    await this.eval((d) => window.__demo.dropSignaling(d), ms);
    await this.waitFor(() => document.body.dataset.signaling === 'reconnecting', null, 'reconnecting state', 10000);
  }

  /** Ends the hold of a `dropSignaling`: the page reconnects now. */
  reconnectSignaling() { return this.eval(() => window.__demo.room.client.reconnectNow()); }

  /**
   * Drops the signaling link; while the page is away, `other` restarts ICE until the server has
   * handled its offer (so it waits in this page's replay buffer); then reconnects and checks
   * that the session resumed (same peer id, no rejoin, the offer replayed). Returns what the
   * page shows after (`id`, `stats`, `transport`).
   */
  async resumeAfterMissingAnOffer(other) {
    const idBefore = await this.peerId();
    await this.dropSignaling(60000);
    await other.restartIce('test: offer while the other side is offline');
    await other.offerSent(`${other.name}'s offer while ${this.name} is offline`);
    await other.sendsConfirmed(`${other.name}'s offer handled by the server`);
    await this.reconnectSignaling();
    await this.joined();
    const after = await this.eval(() => ({ id: window.__demo.room.peerId, stats: window.__demo.client.stats, transport: window.__demo.client.transport }));
    assert(after.id === idBefore && after.stats.resumes >= 1 && after.stats.rejoins === 0 && after.stats.replayed >= 1, `${this.name} resumed: ${JSON.stringify(after)}`);
    return after;
  }

  /** Waits until the page has sent an offer since its last `restartIce`. */
  offerSent(what) {
    return this.waitFor((since) => window.__demo.events.some((e) => e.t >= since && e.type === 'log' && /^-> offer to /.test(e.message)), Math.floor(this.restartedAt ?? 0), what);
  }

  /** Waits until the server confirmed (`pong` `received`) every numbered frame the page sent. */
  sendsConfirmed(what) {
    return this.waitFor(() => { const c = window.__demo.room.client; return c._unconfirmed.length === 0 && c._outbox.length === 0; }, null, what);
  }

  /** How many `peer-removed` events the page has seen. */
  peersRemoved() { return this.eval(() => window.__demo.events.filter((e) => e.type === 'peer-removed').length); }

  stats() { return this.eval(() => window.__demo.stats()); }
}

class TestContext {
  constructor(name, browser, shared) {
    this.name = name;
    this.browser = browser;
    this.shared = shared;
    this.pages = [];
    this.procs = [];
    this.cleanups = [];
    this.room = `t-${name.replace(/[^a-z0-9]+/gi, '-').slice(0, 30)}-${randomBytes(3).toString('hex')}`;
  }

  async open(name, { url, room = this.room, query = '', viewport, initScript, server, browser = this.browser } = {}) {
    const context = await browser.newContext({ viewport: viewport || { width: 1280, height: 800 } });
    if (initScript) await context.addInitScript(initScript);
    const page = await context.newPage();
    const p = new PeerPage(name, page);
    this.pages.push(p);
    const base = (server || this.shared.signaling).http;
    const target = url || `${base}/r/${room}?name=${encodeURIComponent(name)}${query ? `&${query}` : ''}`;
    await page.goto(target, { timeout: 15000 });
    return p;
  }

  /**
   * Opens Alice and, once she has joined, Bob (or the two `names`), both with the options of
   * `open` in `opts` (`server`, `query`, ...).
   */
  async openPair({ names = ['Alice', 'Bob'], ...opts } = {}) {
    const a = await this.open(names[0], opts);
    await a.joined();
    return [a, await this.open(names[1], opts)];
  }

  /** `openPair`, returning once Bob has joined too. */
  async joinedPair(opts) {
    const [a, b] = await this.openPair(opts);
    await b.joined();
    return [a, b];
  }

  /** `openPair`, returning once both are connected to each other (within `timeout`). */
  async pair({ timeout = WAIT, ...opts } = {}) {
    const [a, b] = await this.openPair(opts);
    await Promise.all([a.connected(1, timeout), b.connected(1, timeout)]);
    return [a, b];
  }

  /** A page alone in the room (`Solo`), once it has joined. */
  async solo() {
    const p = await this.open('Solo');
    await p.joined();
    return p;
  }

  track(proc) { this.procs.push(proc); return proc; }

  /** `startSignaling(args, name, listen)`, its process killed when the test ends. */
  async signaling(args, name, listen) {
    const sig = await startSignaling(args, name, listen);
    this.track(sig.proc);
    return sig;
  }

  /** Runs `fn` when the test ends, last registered first, before its tracked processes are killed. */
  onClose(fn) { this.cleanups.push(fn); }

  async screenshot(p, file, opts = {}) {
    const out = path.join(ARTIFACTS, file);
    await p.page.screenshot({ path: out, ...opts });
    return out;
  }

  async close(failed) {
    if (failed) {
      for (const p of this.pages) {
        try {
          const dump = await p.eval(() => ({ events: window.__demo.events.filter((e) => !/^(->|<-) candidate /.test(e.message || '')).slice(-80), peers: window.__demo.peers(), signaling: document.body.dataset.signaling }));
          p.dump = dump;
        } catch { /* page gone */ }
        try { await this.screenshot(p, `fail-${this.name.replace(/\W+/g, '_')}-${p.name}.png`, { fullPage: true }); } catch { /* page gone */ }
      }
    }
    for (const p of this.pages) { try { await p.context.close(); } catch { /* ignore */ } }
    for (const fn of this.cleanups.reverse()) { try { await fn(); } catch { /* ignore */ } }
    for (const proc of this.procs) await proc.stop('SIGKILL').catch(() => {});
  }

  report() {
    const parts = [];
    for (const p of this.pages) {
      parts.push(`  --- page ${p.name} (last console lines)\n${p.logs.slice(-25).map((l) => `    ${l}`).join('\n')}`);
      if (p.dump) {
        parts.push(`  --- page ${p.name}: signaling ${p.dump.signaling}, peers ${JSON.stringify(p.dump.peers)}, last events (candidates left out):`);
        parts.push(p.dump.events.map((e) => `    ${JSON.stringify(e)}`).join('\n'));
      }
    }
    for (const proc of this.procs) parts.push(`  --- ${proc.name}\n${proc.tail(25)}`);
    return parts.join('\n');
  }
}

function assert(cond, message) { if (!cond) throw new Error(`assertion failed: ${message}`); }

const withTimeout = (promise, ms, what) => Promise.race([
  promise,
  new Promise((_, reject) => setTimeout(() => reject(new Error(`test timeout (${ms} ms): ${what}`)), ms)),
]);

// --- tests ---

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

test('chat: a message typed in one browser appears in the other, both ways', async (t) => {
  const [a, b] = await t.pair();
  const transport = await a.eval(() => document.getElementById('signaling-transport').dataset.transport);
  assert(transport === 'websocket', `a WebSocket where nothing blocks it: ${transport}`);
  // Type into the real form on Alice's side.
  await a.page.fill('#chat-input', 'hello from Alice');
  await a.page.click('#chat-send');
  await b.chatFrom('hello from Alice');
  await b.sayTo(a, 'hi Alice, Bob here');
  // And it is rendered, with the sender's name.
  const rendered = await b.eval(() => [...document.querySelectorAll('#chat-log .msg:not(.mine)')].map((li) => li.textContent));
  assert(rendered.some((s) => s.includes('Alice') && s.includes('hello from Alice')), `Bob's chat log shows Alice's message: ${JSON.stringify(rendered)}`);
});

test('canvas: strokes drawn with the mouse appear on the other side', async (t) => {
  const [a, b] = await t.pair();
  const box = await a.page.locator('#board').boundingBox();
  assert(box && box.width > 100, 'canvas has a size');
  await a.page.mouse.move(box.x + box.width * 0.2, box.y + box.height * 0.5);
  await a.page.mouse.down();
  for (let i = 1; i <= 30; i += 1) {
    await a.page.mouse.move(box.x + box.width * (0.2 + 0.02 * i), box.y + box.height * (0.5 + 0.2 * Math.sin(i / 4)));
  }
  await a.page.mouse.up();
  const drawn = await a.eval(() => [...window.__demo.canvas.strokes.entries()].map(([id, s]) => ({ id, n: s.p.length, c: s.c })));
  assert(drawn.length === 1 && drawn[0].n >= 40, `Alice has one stroke with many points: ${JSON.stringify(drawn)}`);
  await b.waitFor((want) => {
    const s = window.__demo.canvas.strokes.get(want.id);
    return s && s.p.length === want.n && s.c === want.c;
  }, drawn[0], 'the whole stroke on Bob\'s canvas');
  // The pixels are really there on Bob's canvas, along the stroke.
  const lit = await b.eval(() => {
    const c = document.getElementById('board');
    const s = [...window.__demo.canvas.strokes.values()][0];
    const ctx = c.getContext('2d');
    let hits = 0;
    for (let i = 0; i < s.p.length; i += 2) {
      const px = ctx.getImageData(Math.min(c.width - 1, Math.round(s.p[i] * c.width)), Math.min(c.height - 1, Math.round(s.p[i + 1] * c.height)), 1, 1).data;
      if (px[3] > 0) hits += 1;
    }
    return hits / (s.p.length / 2);
  });
  assert(lit > 0.9, `Bob's canvas has paint along the stroke (${(lit * 100).toFixed(0)}% of points)`);
  // The other way, through the page API, and Alice's cursor label shows on Bob's side.
  const id = await b.eval(() => window.__demo.drawStroke([[0.1, 0.1], [0.3, 0.2], [0.5, 0.1]], '#ff6b6b'));
  await a.waitFor((sid) => window.__demo.canvas.strokes.has(sid), id, 'Bob\'s stroke on Alice\'s canvas');
  await b.waitFor(() => [...document.querySelectorAll('#cursors .cursor span')].some((s) => s.textContent === 'Alice'), null, 'Alice\'s cursor on Bob\'s canvas');
  // Clear propagates.
  await a.page.click('#clear-canvas');
  await b.waitFor(() => window.__demo.canvas.strokeCount === 0, null, 'clear on Bob\'s side');
});

test('video: the remote video element receives frames from the fake camera', async (t) => {
  const [a, b] = await t.pair();
  await b.waitFor(() => {
    const v = document.querySelector('.tile-remote video');
    return v && v.videoWidth > 0 && v.videoHeight > 0;
  }, null, 'remote video with videoWidth > 0');
  const framesOf = async (p) => Object.values(await p.stats())[0]?.framesDecoded || 0;
  const f1 = await framesOf(b);
  await waitUntil(async () => (await framesOf(b)) > f1 + 10, WAIT, 'framesDecoded increasing on Bob');
  const f2 = await framesOf(a);
  await waitUntil(async () => (await framesOf(a)) > f2 + 10, WAIT, 'framesDecoded increasing on Alice');
  const dims = await b.eval(() => { const v = document.querySelector('.tile-remote video'); return [v.videoWidth, v.videoHeight]; });
  assert(dims[0] >= 160, `decoded video has a real size: ${dims}`);
  // Muting the camera on Alice's side shows in her own controls and stops her video track.
  await a.page.click('#toggle-cam');
  const pressed = await a.page.getAttribute('#toggle-cam', 'aria-pressed');
  assert(pressed === 'true', 'camera button shows off');
  const off = await a.eval(() => ({
    enabled: document.getElementById('local-video').srcObject.getVideoTracks()[0].enabled,
    sent: window.__demo.room.localStream.getVideoTracks().length,
  }));
  assert(off.enabled === false && off.sent === 0, `video track disabled, and no longer sent: ${JSON.stringify(off)}`);
});

test('three peers: a full mesh, everyone hears everyone', async (t) => {
  const a = await t.open('Alice');
  await a.joined();
  const b = await t.open('Bob');
  await b.joined();
  const c = await t.open('Carol');
  await Promise.all([a.connected(2), b.connected(2), c.connected(2)]);
  await c.say('hi both');
  await Promise.all([a.chatFrom('hi both'), b.chatFrom('hi both')]);
  await a.say('hi Carol');
  await Promise.all([b.chatFrom('hi Carol'), c.chatFrom('hi Carol')]);
  await c.waitFor(() => [...document.querySelectorAll('.tile-remote video')].filter((v) => v.videoWidth > 0).length === 2, null, 'two remote videos at Carol');
  await t.screenshot(c, 'three-peers.png');
});

test('glare: both sides renegotiate at the same moment, perfect negotiation settles it', async (t) => {
  const [a, b] = await t.pair();
  for (let round = 0; round < 3; round += 1) {
    await Promise.all([a, b].map((p) => p.restartIce('test: simultaneous restart')));
    for (const p of [a, b]) {
      await p.waitFor(() => {
        const peer = [...window.__demo.room.peers.values()][0];
        return peer.pc.signalingState === 'stable' && peer.state === 'connected' && !peer._makingOffer;
      }, null, `stable and connected after simultaneous restart ${round + 1}`);
    }
  }
  const glare = await a.eval(() => window.__demo.events.some((e) => e.type === 'log' && /^glare/.test(e.message)));
  assert(glare, 'a collision actually happened and the impolite side ignored the other offer');
  await a.sayTo(b, 'after the glare');
  await b.sayTo(a, 'settled');
});

test('no camera: permission denied is shown, chat and canvas still work', async (t) => {
  const deny = () => {
    // Chromium gathers ICE candidates on hosts without a default route only once some
    // getUserMedia was granted: grant one privately (the fake UI allows it), stop it, and
    // deny every call the page makes.
    const real = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
    real({ audio: true }).then((s) => s.getTracks().forEach((tr) => tr.stop()), () => {});
    navigator.mediaDevices.getUserMedia = () => Promise.reject(new DOMException('Permission denied', 'NotAllowedError'));
  };
  const a = await t.open('Alice', { initScript: deny });
  await a.joined();
  await a.waitFor(() => document.body.dataset.media === 'denied', null, 'media state denied');
  const banner = await a.eval(() => ({ kind: document.getElementById('banner').dataset.kind, hidden: document.getElementById('banner').hidden, text: document.getElementById('banner-text').textContent }));
  assert(!banner.hidden && banner.kind === 'media' && /denied/i.test(banner.text), `a camera-denied banner: ${JSON.stringify(banner)}`);
  await t.screenshot(a, 'state-camera-denied.png');
  const b = await t.open('Bob');
  await Promise.all([a.connected(1), b.connected(1)]);
  await a.sayTo(b, 'no camera here');
  await b.sayTo(a, 'I can read you');
  const id = await a.eval(() => window.__demo.drawStroke([[0.2, 0.2], [0.8, 0.8]]));
  await b.waitFor((sid) => window.__demo.canvas.strokes.has(sid), id, 'stroke from the camera-less peer');
  // Alice still receives Bob's camera.
  await a.waitFor(() => document.querySelector('.tile-remote video')?.videoWidth > 0, null, 'Bob\'s video at Alice');
});

test('reconnect: the WebSocket drops mid-call, the page shows reconnecting, resumes, and the call survives', async (t) => {
  const [a, b] = await t.pair();
  const idBefore = await a.peerId();
  const framesOf = async (p) => Object.values(await p.stats())[0]?.framesDecoded || 0;
  // Drop Alice's socket and keep her offline until Bob's offer is out (released below).
  await a.dropSignaling(60000);
  const shown = await a.eval(() => ({ status: document.getElementById('status-text').textContent, banner: document.getElementById('banner').hidden ? '' : document.getElementById('banner-text').textContent }));
  assert(/reconnecting/i.test(shown.status) && /reconnecting/i.test(shown.banner), `the page says it is reconnecting: ${JSON.stringify(shown)}`);
  // A call relayed by a relay inside the signaling process would not stay up: only direct ones are promised.
  assert(/direct calls stay up/i.test(shown.banner) && !/your calls stay up/i.test(shown.banner), `no promise for relayed calls: ${shown.banner}`);
  await t.screenshot(a, 'state-reconnecting.png');
  // While Alice is away, Bob restarts ICE: his offer waits in Alice's replay buffer. (A fixed
  // hold raced with the screenshot above under CI load: the offer came after her return.)
  await b.restartIce('test: offer while the other side is offline');
  await b.offerSent('Bob\'s offer while Alice is offline');
  await b.sendsConfirmed('Bob\'s offer handled by the server');
  await a.reconnectSignaling();
  await a.waitFor(() => document.body.dataset.signaling === 'joined', null, 'joined again after resume', 20000);
  const after = await a.eval(() => ({ id: window.__demo.room.peerId, stats: window.__demo.client.stats }));
  assert(after.id === idBefore, `peer id kept across the resume (${idBefore} -> ${after.id})`);
  assert(after.stats.resumes >= 1 && after.stats.rejoins === 0, `resumed, not rejoined: ${JSON.stringify(after.stats)}`);
  assert(after.stats.replayed >= 1, `the missed offer was replayed: ${JSON.stringify(after.stats)}`);
  // Bob never saw Alice leave, and the ICE restart he started while she was away completed.
  const bobEvents = await b.peersRemoved();
  assert(bobEvents === 0, 'Bob saw no peer-removed');
  await b.iceRestartAnswered('Bob\'s ICE restart answered after the replay');
  // The call is alive: chat both ways and video still flowing.
  await a.sayTo(b, 'back after the drop');
  await b.sayTo(a, 'welcome back');
  const f1 = await framesOf(b);
  await waitUntil(async () => (await framesOf(b)) > f1 + 10, WAIT, 'video frames still decoded on Bob');
  await a.waitFor(() => window.__demo.peers()[0]?.state === 'connected', null, 'Alice still connected to Bob');
});

test('reconnect: signaling restarts (drain on SIGTERM), the pages rejoin and the call comes back', async (t) => {
  const sig = await t.signaling(['--drain-timeout', '1s', '--reconnect-after', '200ms'], 'signaling-restart');
  const [a, b] = await t.pair({ server: sig });
  await sig.proc.stop('SIGTERM', 10000);
  for (const p of [a, b]) {
    await p.waitFor(() => window.__demo.events.some((e) => e.type === 'draining'), null, 'the draining notice', 10000);
  }
  await Promise.all([
    a.waitFor(() => document.body.dataset.signaling === 'reconnecting', null, 'Alice reconnecting', 10000),
    b.waitFor(() => document.body.dataset.signaling === 'reconnecting', null, 'Bob reconnecting', 10000),
  ]);
  const sig2 = await t.signaling([], 'signaling-restarted', sig.addr);
  await Promise.all([a.page, b.page].map((p) => p.evaluate(() => window.__demo.client.reconnectNow())));
  await Promise.all([a.joined(), b.joined()]);
  await Promise.all([a.connected(1), b.connected(1)]);
  const stats = await a.eval(() => window.__demo.client.stats);
  assert(stats.rejoins >= 1, `a new session after the restart: ${JSON.stringify(stats)}`);
  await a.sayTo(b, 'after the restart');
});

test('restart: signaling is killed and comes back, the pages show the peers that are there and explain the reset in one line', async (t) => {
  const sig = await t.signaling(['--reconnect-after', '200ms'], 'signaling-kill');
  const [a, b] = await t.pair({ server: sig, names: ['Ada', 'Grace'] });
  await sig.proc.stop('SIGKILL');
  await Promise.all([a, b].map((p) => p.waitFor(() => document.body.dataset.signaling === 'reconnecting', null, 'reconnecting', 10000)));
  await new Promise((r) => setTimeout(r, 3000));
  const sig2 = await t.signaling(['--resume-grace', '60s'], 'signaling-back', sig.addr);
  await Promise.all([a.joined(), b.joined()]);
  await Promise.all([a.connected(1), b.connected(1)]);
  // A session nobody drives any more, named like Ada (a page of hers that went away during the
  // restart): the server lists it, but it never signals.
  await a.eval(({ url, room }) => {
    const ws = new WebSocket(url);
    ws.onopen = () => ws.send(JSON.stringify({ type: 'join', id: 1, versions: [1], room, name: 'Ada' }));
    window.__ghost = ws;
  }, { url: sig2.ws, room: t.room });
  await Promise.all([a, b].map((p) => p.waitFor(() => window.__demo.room.peers.size === 2, null, 'the silent session listed')));
  await new Promise((r) => setTimeout(r, 3000));
  for (const [p, other] of [[a, 'Grace'], [b, 'Ada']]) {
    const got = await p.eval(() => ({
      tiles: [...document.querySelectorAll('.tile-remote')].map((x) => `${x.querySelector('.tile-name').textContent}:${x.dataset.state}`),
      conns: document.querySelectorAll('.conn').length,
      count: document.body.dataset.peers,
      lines: [...document.querySelectorAll('#chat-log .msg.system')].map((li) => li.textContent),
    }));
    assert(got.tiles.length === 1 && got.tiles[0] === `${other}:connected` && got.conns === 1 && got.count === '1', `${p.name}: only ${other}, connected: ${JSON.stringify(got)}`);
    const resets = got.lines.filter((l) => /signaling server lost this session/.test(l));
    assert(resets.length === 1, `${p.name}: the reset explained once: ${JSON.stringify(got.lines)}`);
    assert(!got.lines.some((l) => / left/.test(l)), `${p.name}: nobody "left": ${JSON.stringify(got.lines)}`);
    const arrivals = got.lines.filter((l) => /^(Ada|Grace) (joined|is here)/.test(l));
    assert(arrivals.length === 1, `${p.name}: ${other} arrived once, the silent session never: ${JSON.stringify(got.lines)}`);
  }
  await a.sayTo(b, 'after the restart');
  await t.screenshot(b, 'state-after-restart.png');
});

/** A private redis-server on a free port (no persistence). */
async function startRedis(t) {
  const port = await freePort();
  const proc = t.track(new Proc('redis', 'redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--logfile', '']));
  await proc.waitForLine(/Ready to accept connections/, 10000, 'redis ready');
  return `redis://127.0.0.1:${port}`;
}

/** HAProxy round-robin (no stickiness) over `backends` (host:port), checked on /readyz. */
async function startHaproxy(t, backends) {
  const port = await freePort();
  const dir = mkdtempSync(path.join(tmpdir(), 'haproxy-'));
  t.onClose(() => rmSync(dir, { recursive: true, force: true }));
  const servers = backends.map((b, i) => `  server s${i} ${b} check inter 300 fall 2 rise 1`).join('\n');
  const cfg = `global\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n  timeout tunnel 1h\n  retries 3\n  option redispatch 1\nfrontend fe\n  bind 127.0.0.1:${port}\n  default_backend be\nbackend be\n  balance roundrobin\n  option httpchk GET /readyz\n${servers}\n`;
  writeFileSync(path.join(dir, 'haproxy.cfg'), cfg);
  t.track(new Proc('haproxy', 'haproxy', ['-db', '-f', path.join(dir, 'haproxy.cfg')]));
  const http = `http://127.0.0.1:${port}`;
  await waitUntil(async () => (await fetch(`${http}/readyz`)).ok, 10000, 'haproxy up');
  return { http, ws: `ws://127.0.0.1:${port}/ws` };
}

/**
 * Two pages through HAProxy over 3 nodes; the node serving one of them is killed mid-call. Over
 * a WebSocket the cut-off page resumes (`resume`) on another node; over SSE its link reopens
 * the event stream on another node (no stickiness: any node answers any request).
 */
async function clusterFailover(t, transport) {
  const redis = await startRedis(t);
  const nodes = [];
  for (let i = 0; i < 3; i += 1) {
    const n = await t.signaling(['--redis', redis, '--node-heartbeat', '200ms', '--node-lease', '1s'], `node${i}`);
    nodes.push(n);
  }
  const lb = await startHaproxy(t, nodes.map((n) => n.addr));
  const query = transport === 'websocket' ? '' : `transport=${transport}`;
  const [a, b] = await t.pair({ server: lb, query });
  for (const p of [a, b]) assert(await p.eval(() => window.__demo.client.transport) === transport, `${p.name} on ${transport}`);
  let victim = null;
  for (const n of nodes) if (!victim && (await openConnections(n)) > 0) victim = n;
  assert(victim, 'a node serves a page');
  const idsBefore = [await a.peerId(), await b.peerId()];
  await victim.proc.stop('SIGKILL');
  // The call does not need signaling; the cut-off page resumes on another node via HAProxy.
  await a.sayTo(b, 'during the failover');
  const resumed = (s) => (transport === 'websocket' ? s.resumes : s.streamReconnects) >= 1;
  await waitUntil(async () => {
    const stats = await Promise.all([a, b].map((p) => p.eval(() => ({ s: window.__demo.client.stats, st: document.body.dataset.signaling }))));
    return stats.some((x) => resumed(x.s)) && stats.every((x) => x.st === 'joined');
  }, 20000, 'the cut-off page resumed and both are joined');
  const after = await Promise.all([a, b].map((p) => p.eval(() => ({ id: window.__demo.room.peerId, stats: window.__demo.client.stats, removed: window.__demo.events.filter((e) => e.type === 'peer-removed').length }))));
  for (const [i, x] of after.entries()) {
    assert(x.id === idsBefore[i], `peer id kept (${idsBefore[i]} -> ${x.id})`);
    assert(x.stats.rejoins === 0, `resumed, not rejoined: ${JSON.stringify(x.stats)}`);
    assert(x.removed === 0, 'nobody saw the other leave');
  }
  // Signaling still works across nodes: Bob restarts ICE, the offer/answer go through the cluster.
  await b.restartIce('test: after failover');
  await b.iceRestartAnswered('Bob\'s ICE restart answered through the cluster');
  await b.sayTo(a, 'after the failover');
}

test('cluster: through HAProxy over 3 nodes, a node is killed mid-call, the pages resume elsewhere and the call goes on', (t) => clusterFailover(t, 'websocket'));
test('cluster: over SSE + POST through HAProxy (no stickiness), a node is killed mid-call, the event stream reopens on another node', (t) => clusterFailover(t, 'sse'));

test('room full: the third peer is told the room is full', async (t) => {
  const sig = await t.signaling(['--max-peers-per-room', '2'], 'signaling-small');
  const [a, b] = await t.joinedPair({ server: sig });
  const c = await t.open('Carol', { server: sig });
  await c.waitFor(() => document.body.dataset.signaling === 'failed', null, 'failed state');
  const shown = await c.eval(() => ({ status: document.getElementById('status-text').textContent, banner: document.getElementById('banner-text').textContent }));
  assert(/full/i.test(shown.status) && /full/i.test(shown.banner), `room full is shown: ${JSON.stringify(shown)}`);
  await t.screenshot(c, 'state-room-full.png');
  await Promise.all([a.connected(1), b.connected(1)]);
});

test('signaling unreachable: the page says so, retries, and joins once the server is up', async (t) => {
  const port = await freePort();
  const a = await t.open('Alice', { query: `signal=${encodeURIComponent(`ws://127.0.0.1:${port}/ws`)}` });
  await a.waitFor(() => document.getElementById('status-text').textContent === 'Signaling unreachable', null, 'unreachable status');
  const banner = await a.eval(() => document.getElementById('banner-text').textContent);
  assert(/can't reach the signaling server/i.test(banner), `banner explains: ${banner}`);
  await t.screenshot(a, 'state-signaling-unreachable.png');
  // Each round tries WebSocket, then SSE + POST, whose request cannot reach the server either:
  // long-polling, which would fail the same way, is not tried too.
  await a.waitFor(() => window.__demo.client.stats.reconnectAttempts >= 3, null, 'three rounds of retries', 15000);
  const tried = await a.eval(() => window.__demo.client.stats);
  assert(tried.fallbacks <= tried.reconnectAttempts + 1, `one fallback a round: ${JSON.stringify(tried)}`);
  const sig = await t.signaling([], 'signaling-late', `127.0.0.1:${port}`);
  // "Retry now" skips the backoff (the page may also have retried on its own meanwhile).
  await a.page.locator('#banner-action').click({ timeout: 2000 }).catch(() => {});
  await a.joined();
  const stats = await a.eval(() => window.__demo.client.stats);
  assert(stats.reconnectAttempts >= 1, `it retried: ${JSON.stringify(stats)}`);
});

// --- signaling over plain HTTP: SSE + POST, long-polling ---

/** Which transport the page says it uses: the connection panel's attribute and text. */
const shownTransport = (p) => p.eval(() => {
  const el = document.getElementById('signaling-transport');
  return { transport: el.dataset.transport, text: el.textContent, client: window.__demo.client.transport, stats: window.__demo.client.stats };
});

/** Chat both ways and a stroke each way between two connected pages. */
async function chatAndDraw(a, b, tag) {
  await a.sayTo(b, `hello from Alice ${tag}`);
  await b.sayTo(a, `hi Alice, Bob ${tag}`);
  const wave = Array.from({ length: 40 }, (_, i) => [0.1 + i * 0.02, 0.5 + 0.2 * Math.sin(i / 5)]);
  const sa = await a.eval((pts) => window.__demo.drawStroke(pts, '#ffd166'), wave);
  const sb = await b.eval((pts) => window.__demo.drawStroke(pts.map(([x, y]) => [x, 1 - y]), '#06d6a0'), wave);
  await b.waitFor((id) => window.__demo.canvas.strokes.has(id), sa, 'Alice\'s stroke on Bob\'s canvas');
  await a.waitFor((id) => window.__demo.canvas.strokes.has(id), sb, 'Bob\'s stroke on Alice\'s canvas');
}

/**
 * Debian's squid as a corporate forward proxy that refuses WebSockets: Chromium sends ws://
 * through an HTTP proxy as a CONNECT tunnel, which only port 443 may open here, and squid does
 * not forward `Upgrade` (no http_upgrade_request_protocols). Plain requests, streamed responses
 * (SSE) and long polls pass. Runs in the foreground (-N) on a free port; started as root it
 * drops to the `proxy` user, so its directory is world-writable. Killed by PID with the test.
 */
async function startSquid(t) {
  const bin = process.env.SQUID_BIN || (existsSync('/usr/sbin/squid') ? '/usr/sbin/squid' : 'squid');
  const dir = mkdtempSync(path.join(tmpdir(), 'squid-'));
  chmodSync(dir, 0o777);
  t.onClose(() => rmSync(dir, { recursive: true, force: true }));
  const conf = path.join(dir, 'squid.conf');
  const accessLog = path.join(dir, 'access.log');
  for (let attempt = 1; ; attempt += 1) {
    // squid cannot listen on port 0: take a free port, and another if it was taken meanwhile.
    const port = await freePort();
    writeFileSync(conf, [
      `http_port 127.0.0.1:${port}`,
      `pid_filename ${dir}/squid.pid`,
      `cache_log ${dir}/cache.log`,
      `access_log stdio:${accessLog}`,
      'cache_store_log none',
      `coredump_dir ${dir}`,
      'cache deny all',
      'pinger_enable off',
      'shutdown_lifetime 0 seconds',
      'acl SSL_ports port 443',
      'http_access deny CONNECT !SSL_ports',
      'http_access allow localhost',
      'http_access deny all',
      '',
    ].join('\n'));
    const proc = t.track(new Proc('squid', bin, ['-N', '-d', '1', '-f', conf]));
    t.onClose(() => proc.stop('SIGKILL'));
    try {
      await proc.waitForLine(new RegExp(`Accepting HTTP Socket connections at .*local=127\\.0\\.0\\.1:${port}\\b`), 15000, 'squid accepting connections');
      return { port, proc, log: () => (existsSync(accessLog) ? readFileSync(accessLog, 'utf8') : '') };
    } catch (err) {
      await proc.stop('SIGKILL');
      if (proc.exited?.error) throw new Error(`squid not found at ${bin} (apt-get install -y squid, or set SQUID_BIN): ${err.message}`);
      if (attempt >= 3) throw err;
    }
  }
}

test('proxy: behind a forward proxy that refuses WebSockets (squid), the pages fall back to SSE + POST; chat and canvas work', async (t) => {
  const squid = await startSquid(t);
  // Chromium bypasses proxies for loopback unless told `<-loopback>`.
  const browser = await launchBrowser([`--proxy-server=http://127.0.0.1:${squid.port}`, '--proxy-bypass-list=<-loopback>']);
  t.onClose(() => browser.close());
  const [a, b] = await t.pair({ browser, timeout: 30000 });
  for (const p of [a, b]) {
    await p.waitFor(() => document.getElementById('signaling-transport').dataset.transport === 'sse', null, 'the panel naming sse', 10000);
    const shown = await shownTransport(p);
    assert(shown.text === 'sse + post' && shown.client === 'sse' && shown.stats.fallbacks >= 1, `${p.name}: fell back to SSE + POST: ${JSON.stringify(shown)}`);
  }
  await chatAndDraw(a, b, 'through squid');
  await t.screenshot(a, 'proxy-sse-fallback.png');
  // Everything went through squid: the WebSocket tunnels were refused, the HTTP transport passed.
  // squid logs a request when it ends: close the pages to end their event streams.
  await Promise.all([a, b].map((p) => p.context.close()));
  const events = /GET http:\/\/127\.0\.0\.1:\d+\/http\/events\?/;
  await waitUntil(() => events.test(squid.log()), 10000, 'the event streams in squid\'s access log');
  const log = squid.log();
  assert(/TCP_DENIED\/403 \d+ CONNECT 127\.0\.0\.1:/.test(log), `squid refused the WebSocket's CONNECT:\n${log.slice(-2000)}`);
  for (const what of [/POST http:\/\/127\.0\.0\.1:\d+\/http /, /POST http:\/\/127\.0\.0\.1:\d+\/http\/send\?/]) {
    assert(what.test(log), `squid carried ${what}:\n${log.slice(-2000)}`);
  }
});

test('long-polling: two pages forced onto long-polling (?transport=long-poll) call, chat and draw', async (t) => {
  const [a, b] = await t.pair({ query: 'transport=long-poll' });
  for (const p of [a, b]) {
    const shown = await shownTransport(p);
    assert(shown.transport === 'long-poll' && shown.text === 'long-polling' && shown.client === 'long-poll', `${p.name}: long-polling: ${JSON.stringify(shown)}`);
  }
  await chatAndDraw(a, b, 'by long-polling');
  // A dropped link resumes the session (same peer id, the missed offer replayed).
  const after = await a.resumeAfterMissingAnOffer(b);
  assert(after.transport === 'long-poll', `still long-polling: ${after.transport}`);
  await b.iceRestartAnswered('Bob\'s ICE restart answered after the replay');
  await a.sayTo(b, 'back after the drop');
});

test('sse: forced SSE + POST (?transport=sse), a broken event stream is reopened from the last seq and a dropped link resumes', async (t) => {
  const [a, b] = await t.pair({ query: 'transport=sse' });
  for (const p of [a, b]) {
    const shown = await shownTransport(p);
    assert(shown.transport === 'sse' && shown.stats.fallbacks === 0, `${p.name}: SSE without a fallback: ${JSON.stringify(shown)}`);
  }
  // Break Alice's event stream (as a proxy cutting it would): the link reopens it by itself.
  await a.eval(() => window.__demo.client._ws._stream.abort());
  await a.waitFor(() => window.__demo.client.stats.streamReconnects >= 1 && document.body.dataset.signaling === 'joined', null, 'the event stream reopened');
  await b.restartIce('test: after the stream broke');
  await b.iceRestartAnswered('Bob\'s ICE restart answered over the reopened stream');
  // Drop the whole link: the next one resumes the session with a `resume` (POST /http).
  const after = await a.resumeAfterMissingAnOffer(b);
  assert(after.transport === 'sse', `still SSE: ${after.transport}`);
  const removed = await b.peersRemoved();
  assert(removed === 0, 'Bob saw no peer-removed');
  await chatAndDraw(a, b, 'after the resume');
});

test('sse and long-polling: rooms named like the transport paths (events, poll, send) join by URL', async (t) => {
  const p = await t.solo();
  const results = await p.eval(async () => {
    const { SignalingClient } = await import('/signaling-client.js');
    const ws = `${location.origin.replace(/^http/, 'ws')}/ws`;
    const out = [];
    for (const [room, transport] of [['events', 'sse'], ['poll', 'long-poll'], ['send', 'sse']]) {
      const client = new SignalingClient(`${ws}/${room}`, { transports: [transport], name: 'x' });
      const session = await Promise.race([client.connect(), new Promise((r) => { setTimeout(() => r(null), 8000); })]);
      out.push({ room, transport: client.transport, joined: session?.room ?? null, state: client.state });
      client.close();
    }
    return out;
  });
  for (const r of results) assert(r.joined === r.room, `room ${r.room} over ${r.transport}: ${JSON.stringify(r)}`);
});

test('client API: httpUrl keeps the room, an oversize send errors after the call with its id, an oversize stats report is refused', async (t) => {
  const p = await t.solo();
  const r = await p.eval(async () => {
    const { SignalingClient } = await import('/signaling-client.js');
    const ws = `${location.origin.replace(/^http/, 'ws')}/ws`;
    const out = {};
    // Another HTTP root: the room is still the WebSocket URL's.
    const http = new SignalingClient(`${ws}/api-room`, { transports: ['long-poll'], httpUrl: `${location.origin}/http/`, name: 'h' });
    const session = await Promise.race([http.connect(), new Promise((res) => { setTimeout(() => res(null), 8000); })]);
    out.httpRoom = session?.room ?? null;
    // Over the frame limit: nothing is sent, and the error, naming the id, comes after the call.
    const max = session?.max_message_bytes ?? 65536;
    let id = null;
    let errorRef;
    let errorDuringCall = false;
    http.addEventListener('error', (e) => {
      if (e.detail.code !== 'message_too_large') return;
      errorRef = e.detail.ref;
      if (id === null) errorDuringCall = true;
    });
    id = http.broadcast('x'.repeat(max));
    await new Promise((res) => { setTimeout(res, 50); });
    out.oversize = { id, errorRef, errorDuringCall };
    const statsErrors = [];
    http.addEventListener('error', (e) => { if (e.detail.code === 'message_too_large' && e.detail.request?.type === 'stats') statsErrors.push(e.detail); });
    out.statsSent = http.reportStats('nobody', { pair: null, bytes_sent: 0, bytes_received: 0, padding: 'x'.repeat(max) });
    await new Promise((res) => { setTimeout(res, 50); });
    out.statsErrorRefs = statsErrors.map((d) => d.ref ?? null);
    out.stateAfter = http.state;
    http.close();
    return out;
  });
  assert(r.httpRoom === 'api-room', `httpUrl keeps the room: ${JSON.stringify(r)}`);
  assert(r.oversize.errorRef === r.oversize.id && !r.oversize.errorDuringCall, `oversize error after the call, ref = id: ${JSON.stringify(r)}`);
  assert(r.statsSent === false && r.stateAfter === 'joined', `oversize stats refused, session intact: ${JSON.stringify(r)}`);
  assert(JSON.stringify(r.statsErrorRefs) === '[null]', `one error for the stats report, naming no id its caller never saw: ${JSON.stringify(r)}`);
});

/** `signaling_connections` of a server `startSignaling` started: its open WebSockets and HTTP
 * streams, pending long-polls included. */
async function openConnections(server) {
  const text = await (await fetch(`${server.http}/metrics`)).text();
  return Number((/^signaling_connections (\d+)/m.exec(text) || [])[1] || 0);
}

/** The server's open connections, long-polls received and frames written to HTTP replies (its /metrics). */
async function pollState(server) {
  const text = await (await fetch(`${server.http}/metrics`)).text();
  const value = (re) => Number((re.exec(text) || [])[1] || 0);
  return {
    open: value(/^signaling_connections (\d+)/m),
    polls: value(/^signaling_http_requests_total\{kind="poll"\} (\d+)/m),
    frames: value(/^signaling_http_frames_delivered_total (\d+)/m),
  };
}

/**
 * A signaling server of the test's own (its log named `name`, started with `args`), and a page
 * of the main server that has joined: the page runs clients against the other server.
 */
async function pageAndOwnServer(t, name, args = []) {
  const other = await t.signaling(args, name);
  const p = await t.solo();
  return { p, other };
}

test('cross-origin: a page of another origin joins a signaling server over SSE + POST and long-polling (CORS)', async (t) => {
  const { p, other } = await pageAndOwnServer(t, 'signaling-other-origin');
  const results = await p.eval(async (ws) => {
    const { SignalingClient } = await import('/signaling-client.js');
    const out = [];
    for (const transport of ['sse', 'long-poll']) {
      const a = new SignalingClient(`${ws}/cors-${transport}`, { transports: [transport], name: 'a' });
      const b = new SignalingClient(`${ws}/cors-${transport}`, { transports: [transport], name: 'b' });
      const timeout = new Promise((r) => { setTimeout(() => r(null), 8000); });
      const joined = await Promise.race([Promise.all([a.connect(), b.connect()]), timeout]);
      const got = new Promise((r) => { b.addEventListener('broadcast', (e) => r(e.detail.data), { once: true }); });
      a.broadcast('across origins');
      const data = await Promise.race([got, new Promise((r) => { setTimeout(() => r(null), 10000); })]);
      out.push({ transport, joined: !!joined, data, used: a.transport, state: a.state });
      a.close();
      b.close();
    }
    return out;
  }, other.ws);
  for (const r of results) assert(r.joined && r.data === 'across origins' && r.used === r.transport, `cross-origin over ${r.transport}: ${JSON.stringify(r)}`);
});

/**
 * Installs, in page `p`, `window.__net`: a `fetch` for the JS client's HTTP transports through
 * a proxy the test turns: `mode` 'pass', 'down' (new requests refused) or 'hold' (requests to
 * the paths `holds` matches get no response, not even its headers, as from a proxy that buffers
 * whole responses); `hangSends` sends (POSTs) from now on get no answer; `cut()` ends the
 * requests under way (a stream's too: its fetch resolves with its headers, its body goes on).
 * And `until(what, ms)`: waits for `what()`, at most `ms`.
 */
function installNet(p) {
  return p.eval(() => {
    const live = new Set();
    const net = { mode: 'pass', holds: /\/(events|poll)\?/, hangSends: 0 };
    const unanswered = (init) => new Promise((_, reject) => { init.signal?.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError'))); });
    net.fetch = (url, init = {}) => {
      if (net.mode === 'down') return Promise.reject(new TypeError('Failed to fetch'));
      if (net.mode === 'hold' && net.holds.test(String(url))) return unanswered(init);
      if (net.hangSends > 0 && /\/send\?/.test(String(url))) {
        net.hangSends -= 1;
        return unanswered(init);
      }
      const ctl = new AbortController();
      init.signal?.addEventListener('abort', () => ctl.abort());
      live.add(ctl);
      return fetch(url, { ...init, signal: ctl.signal });
    };
    net.cut = () => { for (const ctl of live) ctl.abort(); live.clear(); };
    net.until = async (what, ms) => {
      const t0 = Date.now();
      while (!what() && Date.now() - t0 < ms) await new Promise((res) => { setTimeout(res, 50); });
      return what();
    };
    window.__net = net;
  });
}

test('client API: an event stream whose response a buffering proxy holds back, headers and all, falls back to long-polling on the same session', async (t) => {
  const p = await t.solo();
  await installNet(p);
  const r = await p.eval(async () => {
    const { SignalingClient } = await import('/signaling-client.js');
    const ws = `${location.origin.replace(/^http/, 'ws')}/ws/held-stream`;
    const net = window.__net;
    Object.assign(net, { mode: 'hold', holds: /\/events\?/ });
    const a = new SignalingClient(ws, { transports: ['sse', 'long-poll'], fetch: net.fetch, sseFirstByteMs: 1500, name: 'a' });
    const started = Date.now();
    const joined = await Promise.race([a.connect(), new Promise((res) => { setTimeout(() => res(null), 9000); })]);
    const out = { joinedMs: joined ? Date.now() - started : null, transport: a.transport, fallbacks: a.stats.fallbacks };
    // One session only: a second peer finds the first and nobody else.
    const b = new SignalingClient(ws, { transports: ['long-poll'], name: 'b' });
    const session = await Promise.race([b.connect(), new Promise((res) => { setTimeout(() => res(null), 8000); })]);
    out.seenByB = session ? session.peers.map((peer) => peer.name) : null;
    a.close();
    b.close();
    return out;
  });
  // Under connectTimeoutMs (10 s), which would give up on the joined session and join again.
  assert(r.joinedMs !== null && r.joinedMs < 9000, `joined on the same session by long-polling: ${JSON.stringify(r)}`);
  assert(r.transport === 'long-poll' && r.fallbacks === 1, `fell back once, to long-polling: ${JSON.stringify(r)}`);
  assert(JSON.stringify(r.seenByB) === '["a"]', `one session of a, no abandoned one: ${JSON.stringify(r)}`);
});

test('client API: a join whose welcome never comes within connectTimeoutMs leaves the session it opened before joining again', async (t) => {
  const p = await t.solo();
  await installNet(p);
  const r = await p.eval(async () => {
    const { SignalingClient } = await import('/signaling-client.js');
    const ws = `${location.origin.replace(/^http/, 'ws')}/ws/never-welcomed`;
    // The session opens, but nothing the server sends on it comes back.
    const net = window.__net;
    net.mode = 'hold';
    const backoff = { initialMs: 200, maxMs: 200, factor: 1, jitter: 0 };
    const a = new SignalingClient(ws, { transports: ['sse', 'long-poll'], fetch: net.fetch, sseFirstByteMs: 1000, connectTimeoutMs: 3000, backoff, name: 'a' });
    const retried = new Promise((res) => { a.addEventListener('state', (e) => { if (e.detail.state === 'reconnecting') res(); }); });
    a.connect().catch(() => {});
    await Promise.race([retried, new Promise((res) => { setTimeout(res, 8000); })]);
    // Time for the second attempt to open its session.
    await new Promise((res) => { setTimeout(res, 1500); });
    const b = new SignalingClient(ws, { name: 'b' });
    const session = await Promise.race([b.connect(), new Promise((res) => { setTimeout(() => res(null), 8000); })]);
    const out = { seenByB: session ? session.peers.map((peer) => peer.name) : null };
    a.close();
    b.close();
    return out;
  });
  // Without the leave, the first session stays listed beside the second until its grace ends.
  assert(r.seenByB && r.seenByB.length === 1 && r.seenByB[0] === 'a', `one session of a: ${JSON.stringify(r)}`);
});

test('client API: a send whose POST is never answered is sent again after connectTimeoutMs; the sends behind it follow, each once, in order', async (t) => {
  const p = await t.solo();
  await installNet(p);
  const r = await p.eval(async () => {
    const { SignalingClient } = await import('/signaling-client.js');
    const ws = `${location.origin.replace(/^http/, 'ws')}/ws/hung-send`;
    const net = window.__net;
    const opts = (name) => ({ transports: ['sse'], fetch: net.fetch, connectTimeoutMs: 2000, name });
    const a = new SignalingClient(ws, opts('a'));
    const b = new SignalingClient(ws, opts('b'));
    const got = [];
    b.addEventListener('broadcast', (e) => got.push(e.detail.data));
    await Promise.all([a.connect(), b.connect()]);
    net.hangSends = 1;
    for (let n = 1; n <= 3; n += 1) a.broadcast(n);
    const all = await net.until(() => got.length >= 3, 8000);
    const out = { all, got, state: a.state };
    a.close();
    b.close();
    return out;
  });
  assert(r.all && JSON.stringify(r.got) === '[1,2,3]', `delivered once, in order, after the hung send: ${JSON.stringify(r)}`);
});

test('client API: broadcasts an HTTP link never got to the server go in the new session when the old one is lost', async (t) => {
  const { p, other } = await pageAndOwnServer(t, 'signaling-short-grace', ['--resume-grace', '1s']);
  await installNet(p);
  const r = await p.eval(async (ws) => {
    const { SignalingClient } = await import('/signaling-client.js');
    const net = window.__net;
    const backoff = { initialMs: 200, maxMs: 400, factor: 2, jitter: 0 };
    const a = new SignalingClient(`${ws}/unwritten`, { transports: ['sse'], fetch: net.fetch, backoff, name: 'a' });
    // B is not behind the proxy.
    const b = new SignalingClient(`${ws}/unwritten`, { transports: ['sse'], name: 'b' });
    const got = [];
    b.addEventListener('broadcast', (e) => got.push(e.detail.data));
    await Promise.all([a.connect(), b.connect()]);
    // The proxy goes down past the resume grace (1 s) as A broadcasts: nothing reaches the server.
    net.mode = 'down';
    net.cut();
    for (let n = 1; n <= 3; n += 1) a.broadcast(n);
    await new Promise((res) => { setTimeout(res, 3000); });
    const resets = [];
    a.addEventListener('session-reset', () => resets.push(Date.now()));
    net.mode = 'pass';
    const all = await net.until(() => got.length >= 3, 10000);
    const out = { all, got, resets: resets.length, state: a.state };
    a.close();
    b.close();
    return out;
  }, other.ws);
  assert(r.resets === 1, `the session was lost and joined again: ${JSON.stringify(r)}`);
  assert(r.all && JSON.stringify(r.got) === '[1,2,3]', `the broadcasts went in the new session, once, in order: ${JSON.stringify(r)}`);
});

/**
 * In page `p` (with `installNet`): A and B on `transports` in `room`, through `window.__net`;
 * A broadcasts 1, then the proxy turns to `change.mode` (and `change.holds`, a RegExp source),
 * the requests under way are cut (and the proxy passes again after `change.passAfterMs`, if
 * given), then A broadcasts 2 to `last`. Returns what B got, when (ms after the change), and
 * both clients' transports before and after.
 */
function broadcastsAcrossAProxyChange(p, room, transports, change, last) {
  return p.eval(async ([room, transports, change, last]) => {
    const { SignalingClient } = await import('/signaling-client.js');
    const ws = `${location.origin.replace(/^http/, 'ws')}/ws/${room}`;
    const net = window.__net;
    const backoff = { initialMs: 200, maxMs: 400, factor: 2, jitter: 0 };
    const opts = (name) => ({ transports, fetch: net.fetch, sseFirstByteMs: 1500, backoff, name });
    const a = new SignalingClient(ws, opts('a'));
    const b = new SignalingClient(ws, opts('b'));
    const got = [];
    b.addEventListener('broadcast', (e) => got.push({ data: e.detail.data, at: Date.now() }));
    await Promise.all([a.connect(), b.connect()]);
    a.broadcast(1);
    const out = { before: await net.until(() => got.length === 1, 8000), transportsBefore: [a.transport, b.transport] };
    const changed = Date.now();
    net.mode = change.mode;
    if (change.holds) net.holds = new RegExp(change.holds);
    net.cut();
    if (change.passAfterMs) {
      await new Promise((res) => { setTimeout(res, change.passAfterMs); });
      net.mode = 'pass';
    }
    for (let n = 2; n <= last; n += 1) a.broadcast(n);
    out.after = await net.until(() => got.length === last, 12000);
    out.lastMs = out.after ? got[last - 1].at - changed : null;
    out.got = got.map((g) => g.data);
    out.transportsAfter = [a.transport, b.transport];
    a.close();
    b.close();
    return out;
  }, [room, transports, change, last]);
}

test('client API: long-polling clients whose requests were all cut (a proxy restarted) send and receive again at once, not after the poll timeout', async (t) => {
  const p = await t.solo();
  await installNet(p);
  // Down for 1.5 s: the requests under way are cut, new ones refused; then back.
  const r = await broadcastsAcrossAProxyChange(p, 'proxy-restart', ['long-poll'], { mode: 'down', passAfterMs: 1500 }, 2);
  // The poll timeout is 25 s; the reopening backoff at most 400 ms.
  assert(r.before && r.after && r.lastMs < 6500, `delivered soon after the proxy was back: ${JSON.stringify(r)}`);
  assert(JSON.stringify(r.got) === '[1,2]', `each once, in order: ${JSON.stringify(r)}`);
});

test('client API: an event stream reopened through a proxy that now holds responses back falls back to long-polling; nothing is lost', async (t) => {
  const p = await t.solo();
  await installNet(p);
  // The proxy is replaced by one that buffers whole responses: the streams under way are cut,
  // and a new one gets nothing back, not even its headers.
  const r = await broadcastsAcrossAProxyChange(p, 'proxy-swapped', ['sse', 'long-poll'], { mode: 'hold', holds: '/events\\?' }, 5);
  assert(r.before && JSON.stringify(r.transportsBefore) === '["sse","sse"]', `on SSE first: ${JSON.stringify(r)}`);
  assert(r.after && JSON.stringify(r.got) === '[1,2,3,4,5]', `every broadcast once, in order, after the swap: ${JSON.stringify(r)}`);
  assert(JSON.stringify(r.transportsAfter) === '["long-poll","long-poll"]', `both went on by long-polling: ${JSON.stringify(r)}`);
});

/**
 * Connects, in page `p`, a client of `/signaling-client.js` to `url` with `options`, recording
 * its `state` and `error` events; `clientInPage(p)` reads them back.
 */
function connectInPage(p, url, options) {
  return p.eval(async ([u, o]) => {
    const { SignalingClient } = await import('/signaling-client.js');
    const client = new SignalingClient(u, o);
    const events = [];
    client.addEventListener('state', (e) => events.push({ ...e.detail }));
    client.addEventListener('error', (e) => events.push({ error: e.detail.code }));
    window.__client = { client, events };
    await client.connect();
  }, [url, options]);
}

/** The state, stats and recorded events of the client of `connectInPage`. */
function clientInPage(p) {
  return p.eval(() => {
    const { client, events } = window.__client;
    return { state: client.state, info: client.stateInfo, stats: client.stats, events };
  });
}

test('client API: WebSockets that die at once mid-session fall back to SSE + POST through reconnecting, never joined -> joined', async (t) => {
  const p = await t.solo();
  const r = await p.eval(async () => {
    const { SignalingClient } = await import('/signaling-client.js');
    const url = `${location.origin.replace(/^http/, 'ws')}/ws/flaky-fallback`;
    let flaky = false;
    // Once `flaky`, a socket dies abnormally (1006) 20 ms after it opens, as behind a proxy
    // that cuts WebSockets.
    class FlakyWebSocket {
      constructor(u) {
        this.ws = new WebSocket(u);
        this.ws.onopen = () => { this.onopen?.(); if (flaky) setTimeout(() => this.die(), 20); };
        this.ws.onmessage = (e) => { if (!this.dead) this.onmessage?.(e); };
        this.ws.onclose = (e) => { if (!this.dead) this.onclose?.(e); };
        this.ws.onerror = (e) => { if (!this.dead) this.onerror?.(e); };
      }
      get readyState() { return this.dead ? 3 : this.ws.readyState; }
      send(data) { if (!this.dead) this.ws.send(data); }
      close(code, reason) { this.ws.close(code, reason); }
      die() {
        if (this.dead) return;
        this.dead = true;
        try { this.ws.close(); } catch { /* closing already */ }
        this.onclose?.({ code: 1006, reason: '', wasClean: false });
      }
    }
    const backoff = { initialMs: 50, maxMs: 50, factor: 1, jitter: 0 };
    const client = new SignalingClient(url, { name: 'flaky', WebSocket: FlakyWebSocket, backoff });
    const states = [];
    client.addEventListener('state', (e) => states.push(`${e.detail.previous}->${e.detail.state}`));
    await client.connect();
    flaky = true;
    // The live socket dies (it had lived: a reconnect); the next ones die at once.
    client._ws.die();
    const t0 = Date.now();
    while (!(client.transport === 'sse' && client.state === 'joined') && Date.now() - t0 < 10000) {
      await new Promise((res) => { setTimeout(res, 50); });
    }
    const out = { transport: client.transport, state: client.state, states: [...states], fallbacks: client.stats.fallbacks, peer: client.peerId };
    client.close();
    return out;
  });
  assert(r.transport === 'sse' && r.state === 'joined' && r.fallbacks >= 1, `on SSE + POST, joined: ${JSON.stringify(r)}`);
  assert(!r.states.includes('joined->joined') && r.states.at(-1) === 'reconnecting->joined', `through reconnecting: ${JSON.stringify(r.states)}`);
});

test('client API: a session that fell back to SSE or long-polling moves back onto a WebSocket once one works, joined throughout; broadcasts both ways arrive once, in order', async (t) => {
  const p = await t.solo();
  const results = await p.eval(async () => {
    const { SignalingClient } = await import('/signaling-client.js');
    const until = (cond, ms) => new Promise((resolve) => {
      const t0 = Date.now();
      const tick = () => (cond() || Date.now() - t0 > ms ? resolve(cond()) : setTimeout(tick, 20));
      tick();
    });
    // `lagMs`: the WebSocket's frames reach the client that much later, so the end of the SSE
    // stream (the server ends it as it moves the session) comes before the resume's answer.
    const scenario = async (room, lagMs, fallback = 'sse') => {
      const url = `${location.origin.replace(/^http/, 'ws')}/ws/${room}`;
      // While `blocked`, a WebSocket goes to a port nothing listens on: it fails to open, as
      // a refused upgrade does.
      let blocked = true;
      let refused = 0;
      class GatedWebSocket extends WebSocket {
        constructor(u) {
          if (blocked) refused += 1;
          super(blocked ? 'ws://127.0.0.1:9/' : u);
        }

        get onmessage() { return this.handler; }

        // Each frame goes, late, to the handler of that moment (as a browser dispatches it).
        set onmessage(f) {
          this.handler = f;
          super.onmessage = f && ((e) => { setTimeout(() => this.handler?.(e), lagMs); });
        }
      }
      const backoff = { initialMs: 50, maxMs: 50, factor: 1, jitter: 0 };
      const transports = ['websocket', fallback];
      const a = new SignalingClient(url, { name: 'a', WebSocket: GatedWebSocket, backoff, upgradeProbeMs: 400, transports });
      const b = new SignalingClient(url, { name: 'b', backoff });
      const states = [];
      const used = [];
      const errors = [];
      a.addEventListener('state', (e) => states.push(`${e.detail.previous}->${e.detail.state}${e.detail.code ? ` (${e.detail.code}: ${e.detail.message})` : ''}`));
      a.addEventListener('transport', (e) => used.push(e.detail.transport));
      for (const c of [a, b]) c.addEventListener('error', (e) => errors.push(e.detail.code));
      const gotA = [];
      const gotB = [];
      a.addEventListener('broadcast', (e) => gotA.push(e.detail.data.n));
      b.addEventListener('broadcast', (e) => gotB.push(e.detail.data.n));
      await a.connect();
      await b.connect();
      await until(() => a.peers.size === 1 && b.peers.size === 1, 8000);
      const first = a.transport;
      // Both send every 40 ms from here on (within the default message rate); the WebSocket
      // works again after a probe was refused.
      let n = 0;
      const sender = setInterval(() => { n += 1; a.broadcast({ n }); b.broadcast({ n }); }, 40);
      await until(() => refused >= 2, 8000);
      blocked = false;
      await until(() => a.transport === 'websocket', 15000);
      await new Promise((res) => { setTimeout(res, 500 + lagMs); });
      clearInterval(sender);
      await until(() => gotA.length >= n && gotB.length >= n, 10000);
      // A duplicate would arrive right behind.
      await new Promise((res) => { setTimeout(res, 300 + lagMs); });
      const inOrder = (got) => got.length === n && got.every((v, i) => v === i + 1);
      const out = {
        lagMs, fallback, first, transport: a.transport, used: [...used], states: [...states], errors, refused, sent: n,
        aInOrder: inOrder(gotA), bInOrder: inOrder(gotB), gotA: gotA.length, gotB: gotB.length,
        upgrades: a.stats.upgrades, resumes: a.stats.resumes, bSeesA: b.peers.has(a.peerId),
      };
      a.close();
      b.close();
      return out;
    };
    return [
      await scenario('upgrade-back', 0),
      await scenario('upgrade-back-lagging', 300),
      await scenario('upgrade-back-poll', 0, 'long-poll'),
    ];
  });
  for (const r of results) {
    const what = `${r.fallback}, lag ${r.lagMs} ms: ${JSON.stringify(r)}`;
    assert(r.first === r.fallback, `joined over HTTP first, ${what}`);
    assert(r.transport === 'websocket' && r.upgrades === 1 && r.resumes === 1, `back on a WebSocket, by one resume, ${what}`);
    assert(JSON.stringify(r.used) === JSON.stringify([r.fallback, 'websocket']), `transport events, ${what}`);
    assert(JSON.stringify(r.states) === '["idle->connecting","connecting->joined","joined->joined"]', `joined throughout, ${what}`);
    assert(r.aInOrder && r.bInOrder && r.sent > 20 && r.errors.length === 0, `every broadcast once, in order, both ways, ${what}`);
    assert(r.bSeesA, `the other peer still sees A, ${what}`);
  }
});

test('client API: an earlier resume\'s `resumed`, replayed before the answer to the client\'s own resume, is not taken for it', async (t) => {
  const p = await t.solo();
  const r = await p.eval(async () => {
    const { SignalingClient } = await import('/signaling-client.js');
    const url = `${location.origin.replace(/^http/, 'ws')}/ws/replayed-resumed`;
    const backoff = { initialMs: 300, maxMs: 300, factor: 1, jitter: 0 };
    const a = new SignalingClient(url, { name: 'a', backoff });
    const states = [];
    a.addEventListener('state', (e) => states.push(`${e.detail.previous}->${e.detail.state}`));
    await a.connect();
    // Another socket resumes A's session (request 999): the server answers it with a
    // `resumed` numbered after A's last seq, and ends A's socket. A resumes from its last seq,
    // so the replay carries that `resumed` before the answer to A's own resume.
    const other = new WebSocket(url);
    const answered = new Promise((resolve) => { other.onmessage = (e) => resolve(JSON.parse(e.data)); });
    await new Promise((resolve) => { other.onopen = resolve; });
    other.send(JSON.stringify({ type: 'resume', id: 999, versions: [1], resume_token: a.session.resume_token, last_seq: a.lastSeq }));
    const theirs = await answered;
    other.close();
    const t0 = Date.now();
    while (!(a.state === 'joined' && a.lastSeq > theirs.seq) && Date.now() - t0 < 8000) {
      await new Promise((res) => { setTimeout(res, 50); });
    }
    await new Promise((res) => { setTimeout(res, 300); });
    const out = { theirs: { type: theirs.type, ref: theirs.ref, seq: theirs.seq }, lastSeq: a.lastSeq, states: [...states], resumes: a.stats.resumes };
    a.close();
    return out;
  });
  assert(r.theirs.type === 'resumed' && r.theirs.ref === 999 && r.lastSeq > r.theirs.seq, `the other socket's resumed, then A's: ${JSON.stringify(r)}`);
  assert(r.resumes === 1 && !r.states.includes('joined->joined'), `A took only its own resume's answer: ${JSON.stringify(r)}`);
});

test('client API: an HTTP link whose server died reopens on the backoff, then gives up after maxReconnectAttempts', async (t) => {
  const { p, other } = await pageAndOwnServer(t, 'signaling-dies');
  const backoff = { initialMs: 200, maxMs: 400, factor: 2, jitter: 0 };
  await connectInPage(p, `${other.ws}/gives-up`, { transports: ['long-poll'], name: 'g', maxReconnectAttempts: 3, backoff });
  await other.proc.stop('SIGKILL');
  await p.waitFor(() => window.__client.client.state === 'failed', null, 'the client gave up', 15000);
  const r = await clientInPage(p);
  const retries = r.events.filter((e) => e.state === 'reconnecting').map((e) => [e.attempt, e.retryInMs]);
  // Each reopen waits the backoff (200, 400, 400 ms); a fourth attempt is never made.
  assert(/gave up after 3 attempts/.test(r.info.message), `gave up: ${JSON.stringify(r.info)}`);
  assert(JSON.stringify(retries) === '[[1,200],[2,400],[3,400]]', `reopened on the backoff: ${JSON.stringify(retries)}`);
  assert(r.stats.reconnectAttempts === 3, `three attempts, none after the link gave up: ${JSON.stringify(r.stats)}`);
});

test('client API: a refused resume (the server restarted) is followed by a join at once, not after the backoff', async (t) => {
  // A grace period shorter than the backoff: the client resumes all the same (only the server
  // knows whether it still holds the session; a cluster's grace restarts after an outage).
  const { p, other: sig } = await pageAndOwnServer(t, 'signaling-forgets', ['--resume-grace', '1s']);
  const backoff = { initialMs: 1500, maxMs: 1500, factor: 1, jitter: 0 };
  await connectInPage(p, `${sig.ws}/forgotten`, { name: 'f', backoff });
  await sig.proc.stop('SIGKILL');
  const sig2 = await t.signaling([], 'signaling-forgot', sig.addr);
  await p.waitFor(() => window.__client.client.stats.rejoins >= 1, null, 'joined again', 15000);
  const r = await clientInPage(p);
  const events = r.events.map((e) => e.error ?? `${e.state}${e.retryInMs === undefined ? '' : ` ${e.retryInMs}`}`);
  // The lost socket waits the backoff; the refused resume's rejoin does not.
  const after = events.slice(events.indexOf('resume_failed'));
  assert(events.includes('reconnecting 1500'), `the lost socket waited the backoff: ${events}`);
  assert(after[1] === 'reconnecting 0', `rejoined at once after resume_failed: ${events}`);
});

test('client API: a client of a draining server leaves it after reconnect_after_ms, not at the end of the drain time', async (t) => {
  const args = ['--drain-timeout', '10s', '--reconnect-after', '500ms'];
  const { p, other } = await pageAndOwnServer(t, 'signaling-drains-long', args);
  await connectInPage(p, `${other.ws}/leaves`, { name: 'l' });
  const stopped = other.proc.stop('SIGTERM', 15000);
  // Well before the 10 s drain ends, with room for a loaded machine.
  await p.waitFor(() => window.__client.events.some((e) => e.state === 'reconnecting'), null, 'the client leaving the draining server', 7000);
  const r = await clientInPage(p);
  const gone = r.events.find((e) => e.state === 'reconnecting');
  assert(/draining/.test(gone.message ?? ''), `left because the server drains: ${JSON.stringify(gone)}`);
  await stopped;
});

test('client API: a long-polling client of a draining server reopens after its reconnect_after_ms, not at once', async (t) => {
  const args = ['--drain-timeout', '1s', '--reconnect-after', '1500ms'];
  const { p, other } = await pageAndOwnServer(t, 'signaling-drains', args);
  const backoff = { initialMs: 100, maxMs: 100, factor: 1, jitter: 0 };
  await connectInPage(p, `${other.ws}/drains`, { transports: ['long-poll'], name: 'd', backoff });
  // The drain answers the poll that waits (protocol.md): SIGTERM once the client's poll is
  // held, not in the instant between two polls. The first polls are answered at once (what
  // the join queued), so a poll open at one instant may be gone the next: wait until one
  // stays open with no poll sent or answered for 300 ms (the server holds it for 25 s).
  await waitUntil(async () => {
    const before = await pollState(other);
    await new Promise((r) => { setTimeout(r, 300); });
    const after = await pollState(other);
    return before.open >= 1 && after.open >= 1 && before.polls === after.polls && before.frames === after.frames;
  }, 10000, 'a long-poll held by the server');
  const stopped = other.proc.stop('SIGTERM', 10000);
  await p.waitFor(() => window.__client.events.some((e) => e.state === 'reconnecting'), null, 'the link reopening after the drain', 10000);
  await stopped;
  const r = await clientInPage(p);
  const retries = r.events.filter((e) => e.state === 'reconnecting').map((e) => e.retryInMs);
  assert(retries[0] >= 1500, `the first reopen waits reconnect_after_ms: ${JSON.stringify(retries)}`);
});

test('cseq: what a dead link swallowed is sent again after the resume and arrives once, in order, over each transport', async (t) => {
  const p = await t.solo();
  const results = await p.eval(async () => {
    const { SignalingClient } = await import('/signaling-client.js');
    const ws = `${location.origin.replace(/^http/, 'ws')}/ws`;
    const until = (cond, ms) => new Promise((resolve) => {
      const t0 = Date.now();
      const tick = () => (cond() || Date.now() - t0 > ms ? resolve(cond()) : setTimeout(tick, 50));
      tick();
    });
    const out = [];
    for (const transport of ['websocket', 'sse', 'long-poll']) {
      const room = `cseq-${transport}`;
      const a = new SignalingClient(`${ws}/${room}`, { transports: [transport], name: 'a' });
      const b = new SignalingClient(`${ws}/${room}`, { transports: [transport], name: 'b' });
      const got = [];
      b.addEventListener('broadcast', (e) => got.push(e.detail.data.n));
      await a.connect();
      await b.connect();
      await until(() => a.peers.size === 1, 8000);
      for (let n = 1; n <= 3; n++) a.broadcast({ n });
      await until(() => got.length >= 3, 8000);
      // The path dies without the link noticing: what A writes now never reaches the server.
      a._ws.send = () => true;
      for (let n = 4; n <= 6; n++) a.broadcast({ n });
      a.dropConnection();
      await until(() => got.length >= 6 && a.state === 'joined', 10000);
      // A duplicate would arrive right behind the resent frames.
      await new Promise((r) => { setTimeout(r, 500); });
      out.push({ transport, got, resent: a.stats.resent, resumes: a.stats.resumes });
      a.close();
      b.close();
    }
    return out;
  });
  for (const r of results) {
    assert(JSON.stringify(r.got) === '[1,2,3,4,5,6]', `${r.transport}: every broadcast once, in order: ${JSON.stringify(r)}`);
    assert(r.resumes === 1 && r.resent >= 3, `${r.transport}: resumed once and sent the swallowed frames again: ${JSON.stringify(r)}`);
  }
});

/** A signaling server, tracked by `t`, handing out credentials for our relay on loopback `port` (UDP) signed with `secret`; `args`: more flags. */
async function startTurnSignaling(t, port, secret, name = 'signaling-turn', args = []) {
  const sig = await t.signaling(['--turn-url', `turn:127.0.0.1:${port}?transport=udp`, '--turn-secret', secret, ...args], name);
  return sig;
}

/** Starts our relay on a free loopback port with a fresh REST secret; resolves with { port, secret }. */
async function startRelay(t, { port: fixedPort, secret: fixedSecret, admin = false } = {}) {
  const relayBin = requireBin('RELAY_BIN', 'relay');
  const secret = fixedSecret || randomBytes(16).toString('hex');
  const port = fixedPort || await freePort();
  const adminPort = admin ? await freePort() : null;
  const relay = t.track(new Proc('relay', relayBin, [
    '--listen', `127.0.0.1:${port}`, '--relay-ip', '127.0.0.1', '--turn-secret', secret,
    '--allow-loopback-peers', '--admin-listen', adminPort ? `127.0.0.1:${adminPort}` : 'none', '--realm', 'browser-test',
  ]));
  await waitUntil(() => stunBinding(port), 15000, `relay answering STUN on 127.0.0.1:${port}`, 200);
  assert(!relay.exited, 'relay running');
  /** A metric of the relay's /metrics (with `admin`), summed over its labels. */
  const metric = async (name) => {
    const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
    return text.split('\n').filter((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`)).reduce((sum, l) => sum + Number(l.split(' ').pop()), 0);
  };
  return { port, secret, proc: relay, metric };
}

test('relay only: through our TURN relay the selected pair is relay/relay and chat works', async (t) => {
  const { port, secret } = await startRelay(t);
  // Short-lived credentials: the server pushes fresh ones (at 80% of the TTL) during the test.
  const sig = await startTurnSignaling(t, port, secret, 'signaling-turn', ['--turn-ttl', '6s']);
  const [a, b] = await t.pair({ server: sig, query: 'relay=1', timeout: 30000 });
  const offered = await a.eval(() => ({ disabled: document.getElementById('relay-only').disabled, note: !document.getElementById('relay-note').hidden }));
  assert(!offered.disabled && !offered.note, `with a TURN server the switch is offered: ${JSON.stringify(offered)}`);
  for (const p of [a, b]) {
    const info = Object.values(await p.stats())[0];
    assert(info && info.localType === 'relay' && info.remoteType === 'relay', `${p.name}: selected pair relay/relay: ${JSON.stringify(info)}`);
    await p.waitFor(() => document.querySelector('.conn .c-path')?.textContent === 'relay ↔ relay', null, 'the connection panel showing relay ↔ relay', 10000);
  }
  await a.sayTo(b, 'through the relay');
  await b.sayTo(a, 'relayed back');
  await t.screenshot(a, 'relay-only.png');
  // Fresh TURN credentials arrive, are applied, and the relayed call moves onto them (an ICE
  // restart by each side whose local candidate is relayed) without dropping.
  await a.waitFor(() => window.__demo.client.stats.iceServerUpdates >= 2, null, 'two pushes of fresh TURN credentials', 20000);
  const restarted = await a.eval(() => window.__demo.events.some((e) => e.type === 'log' && /fresh TURN credentials/.test(e.message)));
  const restartedB = await b.eval(() => window.__demo.events.some((e) => e.type === 'log' && /fresh TURN credentials/.test(e.message)));
  assert(restarted && restartedB, `both relayed sides restarted ICE onto their fresh credentials (Alice ${restarted}, Bob ${restartedB})`);
  await Promise.all([a.connected(1), b.connected(1)]);
  await a.sayTo(b, 'still relayed after new credentials');
  const info = Object.values(await a.stats())[0];
  assert(info.localType === 'relay' && info.remoteType === 'relay', `still relay/relay: ${JSON.stringify(info)}`);
});

/**
 * Fresh TURN credentials that arrive while the path is down (the relay frozen, the connection
 * 'reconnecting') are moved onto once it is back: Chromium comes back on the old allocation by
 * itself, so the page restarts ICE then ('fresh TURN credentials'), not at the next refresh.
 * The watchdog's own restarts are held off, so that the path comes back without one.
 */
test('relay only: fresh TURN credentials that arrive while the path is down are moved onto once it is back', async (t) => {
  const { port, secret, proc: relay } = await startRelay(t);
  // A refresh every 12 s: time for the page to see the path down (about 5 to 10 s after the
  // relay stops answering) before the next one.
  const sig = await startTurnSignaling(t, port, secret, 'signaling-turn-down', ['--turn-ttl', '15s']);
  const [a, b] = await t.pair({ server: sig, query: 'relay=1', timeout: 30000 });
  await a.eval(() => { window.__demo.room.options.iceRestartDelayMs = 120000; });
  const look = () => a.eval(() => ({
    updates: window.__demo.client.stats.iceServerUpdates,
    state: window.__demo.peers()[0]?.state,
    fresh: window.__demo.events.filter((e) => e.type === 'log' && /fresh TURN credentials/.test(e.message)).length,
  }));
  let landed = null;
  for (let attempt = 1; attempt <= 3 && !landed; attempt += 1) {
    const before = (await look()).updates;
    await a.waitFor((n) => window.__demo.client.stats.iceServerUpdates > n, before, 'a refresh', 20000);
    // Its restart (connected, relayed) settles; the path goes down well before the next one.
    await sleep(1500);
    const refreshed = (await look()).updates;
    process.kill(relay.child.pid, 'SIGSTOP');
    let now = await look();
    let prev = now;
    for (let i = 0; i < 150 && now.updates === refreshed; i += 1) {
      await sleep(100);
      prev = now;
      now = await look();
    }
    process.kill(relay.child.pid, 'SIGCONT');
    // Landed while down: the page saw the path down before the refresh came, and made no
    // restart for it (a page that still saw the path up restarts at once, and its restart is
    // what shows it reconnecting: that is no landing while down).
    const down = prev.state !== 'connected' && now.state !== 'connected';
    if (now.updates !== refreshed && down && now.fresh === prev.fresh) landed = now;
    else await a.connected(1, 30000);
  }
  assert(landed, 'a refresh arrived while the connection was down');
  await a.connected(1, 30000);
  await a.waitFor((n) => window.__demo.events.filter((e) => e.type === 'log' && /fresh TURN credentials/.test(e.message)).length > n,
    landed.fresh, 'a restart onto the fresh credentials', 6000);
  const after = await look();
  assert(after.updates === landed.updates, `the restart came before the next refresh: ${JSON.stringify({ landed, after })}`);
  await a.connected(1, 30000);
  await a.sayTo(b, 'back on fresh credentials');
});

/**
 * One port for everything (`--shared-port`): the page, its WSS signaling and TURN over TLS all
 * on signaling's one TLS port, the in-process relay behind it. The pages may use only that
 * port's TURN URL (as a client behind a firewall that lets nothing but that TCP port out) and
 * relay-only: the call connects through TURN over TLS on the shared port.
 */
test('one port: relay-only through TURN over TLS on the port that serves the page and WSS (--shared-port)', async (t) => {
  const sig = await t.signaling(['--tls-self-signed', '--with-relay', '--relay-listen', '127.0.0.1:0', '--shared-port'], 'signaling-one-port');
  assert(sig.http.startsWith('https://'), `served over TLS: ${sig.http}`);
  const port = sig.addr.split(':').pop();
  // The self-signed certificate: for the page, its WSS and the TURN over TLS connection.
  const browser = await launchBrowser(['--ignore-certificate-errors']);
  t.onClose(() => browser.close());
  const onlyThisPort = `(${(p) => {
    const keep = (config) => {
      const servers = (config?.iceServers || []).map((s) => ({ ...s, urls: [].concat(s.urls).filter((u) => u.startsWith(`turns:127.0.0.1:${p}?`)) }));
      return { ...config, iceServers: servers.filter((s) => s.urls.length) };
    };
    const Real = window.RTCPeerConnection;
    const setConfiguration = Real.prototype.setConfiguration;
    Real.prototype.setConfiguration = function (config) { return setConfiguration.call(this, keep(config)); };
    window.RTCPeerConnection = function RTCPeerConnection(config, ...rest) { return new Real(keep(config), ...rest); };
    window.RTCPeerConnection.prototype = Real.prototype;
  }})(${JSON.stringify(port)})`;
  const [a, b] = await t.pair({ server: sig, browser, query: 'relay=1', initScript: onlyThisPort, timeout: 30000 });
  for (const p of [a, b]) {
    const info = Object.values(await p.stats())[0];
    assert(info && info.localType === 'relay' && info.relayProtocol === 'tls', `${p.name}: relayed over TLS: ${JSON.stringify(info)}`);
    assert(String(info.relayUrl).includes(`:${port}`), `${p.name}: through the shared port ${port}: ${JSON.stringify(info)}`);
  }
  await a.sayTo(b, 'one port for everything');
  const metrics = await a.eval(async () => (await fetch('/metrics')).text());
  const handovers = Number((metrics.match(/^signaling_turn_handovers_total (\d+)/m) || [])[1]);
  assert(handovers >= 2, `TURN connections handed to the relay: ${handovers}`);
});

test('admin page: a room appears, a relay-only call shows as relayed (from the clients\' stats reports) with each peer\'s signaling transport, the room goes away after everyone leaves, and a drain shows', async (t) => {
  const sig = await t.signaling(['--with-relay', '--admin-listen', '127.0.0.1:0'], 'signaling-admin');
  const adminUrl = (await sig.proc.waitForLine(/^admin (http:\/\/\S+)/, 10000, '"admin http://ADDR"'))[1];
  const admin = await t.open('Admin', { url: adminUrl });
  await admin.waitFor(() => document.getElementById('status').textContent === 'live', null, 'the admin page fed by SSE', 10000);
  const rowsOf = (room) => [...document.querySelectorAll('#rooms tr')].filter((tr) => tr.dataset.room === room)
    .map((tr) => ({ peer: tr.dataset.peer, path: tr.querySelector('[data-field=path]')?.textContent, pair: tr.querySelector('[data-field=candidates]')?.textContent, signaling: tr.querySelector('[data-field=signaling]')?.textContent }));
  const a = await t.open('Alice', { server: sig, query: 'relay=1' });
  await a.joined();
  await admin.waitFor((room) => [...document.querySelectorAll('#rooms tr')].some((tr) => tr.dataset.room === room), t.room, 'the room on the admin page', 10000);
  const b = await t.open('Bob', { server: sig, query: 'relay=1' });
  await Promise.all([a.connected(1, 30000), b.connected(1, 30000)]);
  // Each JS client reports its selected pair as soon as it is connected: both show relayed.
  await admin.waitFor((room) => {
    const rows = [...document.querySelectorAll('#rooms tr')].filter((tr) => tr.dataset.room === room);
    return rows.length === 2 && rows.every((tr) => tr.querySelector('[data-field=path]')?.textContent === 'relayed');
  }, t.room, 'both peers relayed on the admin page', 20000);
  const rows = await admin.eval(rowsOf, t.room);
  assert(rows.every((r) => /^relay ↔ /.test(r.pair)), `relay candidates on our side: ${JSON.stringify(rows)}`);
  assert(rows.every((r) => r.signaling === 'websocket'), `each peer's signaling transport: ${JSON.stringify(rows)}`);
  const page = await admin.eval(() => ({
    relays: [...document.querySelectorAll('#relays [data-field=allocations]')].map((td) => Number(td.textContent)),
    share: document.getElementById('relayed-share').textContent,
    cost: document.getElementById('cost').textContent,
  }));
  assert(page.relays.length === 1 && page.relays[0] >= 2, `the in-process relay with the call's allocations: ${JSON.stringify(page)}`);
  assert(/^100 %/.test(page.share) && /^\$/.test(page.cost), `every reporting peer relayed, a cost shown: ${JSON.stringify(page)}`);
  const snapshot = await (await fetch(`${adminUrl}/snapshot`)).json();
  const link = snapshot.rooms.find((r) => r.room === t.room).peers[0].links[0];
  assert(link.pair.local === 'relay' && link.pair.relay_url?.startsWith('turn:') && Number.isInteger(link.bytes_sent), `a full report: ${JSON.stringify(link)}`);
  await t.screenshot(admin, 'admin-page.png');
  await a.eval(() => window.__demo.leave());
  await b.eval(() => window.__demo.leave());
  await admin.waitFor((room) => ![...document.querySelectorAll('#rooms tr')].some((tr) => tr.dataset.room === room), t.room, 'the room gone from the admin page after everyone left', 10000);
  // A drain shows (a peer keeps the node draining until the test ends).
  assert(await admin.eval(() => document.getElementById('draining').hidden), 'not draining yet');
  const c = await t.open('Carol', { server: sig });
  await c.joined();
  process.kill(sig.proc.pid, 'SIGTERM');
  await admin.waitFor(() => !document.getElementById('draining').hidden, null, 'draining on the admin page', 10000);
});

test('admin API: a kicked page stops (no resume, no rejoin) and says so; closing the room stops the other page', async (t) => {
  const key = 'browser-admin-key';
  const sig = await t.signaling(['--api-key', key], 'signaling-kick');
  const a = await t.open('Alice', { server: sig });
  const b = await t.open('Bob', { server: sig });
  await Promise.all([a.connected(1, 30000), b.connected(1, 30000)]);
  const bobId = await b.peerId();
  const admin = (method, path) => fetch(`${sig.http}${path}`, { method, headers: { Authorization: `Bearer ${key}` } });
  const kick = await admin('POST', `/v1/rooms/${t.room}/peers/${bobId}/kick`);
  assert(kick.status === 200, `kick answered ${kick.status}`);
  await b.waitFor(() => document.body.dataset.signaling === 'failed', null, 'Bob\'s page failed after the kick', 10000);
  const bob = await b.eval(() => ({ banner: document.getElementById('banner-text').textContent, stats: window.__demo.client.stats }));
  assert(/removed you/.test(bob.banner), `the page says why: ${JSON.stringify(bob)}`);
  await a.waitFor(() => window.__demo.peers().length === 0, null, 'Alice sees Bob leave', 10000);
  await new Promise((r) => setTimeout(r, 1500));
  const later = await b.eval(() => ({ state: document.body.dataset.signaling, stats: window.__demo.client.stats }));
  assert(later.state === 'failed' && later.stats.resumes === 0 && later.stats.rejoins === 0, `Bob stays out: ${JSON.stringify(later)}`);
  const close = await admin('POST', `/v1/rooms/${t.room}/close`);
  assert(close.status === 200 && (await close.json()).closed === 1, 'the room closed with Alice in it');
  await a.waitFor(() => document.body.dataset.signaling === 'failed', null, 'Alice\'s page failed after the close', 10000);
  const alice = await a.eval(() => document.getElementById('banner-text').textContent);
  assert(/closed this room/.test(alice), `Alice's page says why: ${alice}`);
});

test('relay switch: "Relay only" turned on mid-call moves the call onto the relay, and off again, from either side', async (t) => {
  const { port, secret, metric } = await startRelay(t, { admin: true });
  const sig = await startTurnSignaling(t, port, secret);
  const [a, b] = await t.pair({ server: sig });
  const localType = async (p) => Object.values(await p.stats())[0]?.localType || null;
  const shown = (p) => p.eval(() => ({ on: document.getElementById('relay-only').checked, tile: document.querySelector('.tile-remote')?.dataset.path || '', panel: document.querySelector('.conn .c-path')?.textContent || '' }));
  for (const [who, other] of [[a, b], [b, a]]) {
    assert(await localType(who) === 'host', `${who.name}: direct before the switch`);
    await who.page.click('.switch:has(#relay-only) .switch-track');
    const t0 = Date.now();
    let ui = null;
    // Until the selected pair is relayed, the page says "switching", never "direct".
    while (Date.now() - t0 < 20000) {
      ui = await shown(who);
      assert(ui.on && ui.tile !== 'direct' && !/host ↔ host/.test(ui.panel), `${who.name}: "Relay only" ON never next to a direct path: ${JSON.stringify(ui)}`);
      if (await localType(who) === 'relay' && ui.tile === 'relay') break;
      await new Promise((r) => setTimeout(r, 150));
    }
    assert(await localType(who) === 'relay', `${who.name}: the selected pair moved onto the relay within 20 s: ${JSON.stringify(ui)}`);
    await who.waitFor(() => /^relay ↔ /.test(document.querySelector('.conn .c-path')?.textContent || ''), null, 'the panel showing the relayed pair');
    await Promise.all([who.connected(1), other.connected(1)]);
    await who.sayTo(other, `relayed from ${who.name}`);
    await other.sayTo(who, `relayed to ${who.name}`);
    // And off again: back to a direct pair.
    await who.page.click('.switch:has(#relay-only) .switch-track');
    await waitUntil(async () => (await localType(who)) === 'host', 20000, `${who.name}: direct again after "Relay only" off`);
    await Promise.all([who.connected(1), other.connected(1)]);
    await who.waitFor(() => document.querySelector('.tile-remote')?.dataset.path === 'direct', null, 'the tile showing direct again');
  }
  await a.sayTo(b, 'after both switches');
  // The replaced connections released their TURN allocations (deleted, not left to expire),
  // and no quota was hit on the way (per-user allocations).
  await waitUntil(async () => (await metric('relay_allocations_deleted_total')) > 0, 10000, 'old allocations deleted');
  const hits = await metric('relay_quota_hits_total');
  assert(hits === 0, `no quota hits during the switches: ${hits}`);
  await b.waitFor(() => document.querySelector('.tile-remote video')?.videoWidth > 0, null, 'video still flowing');
});

test('ICE restart: the relay dies mid-call (relay-only), comes back, and the call recovers', async (t) => {
  const first = await startRelay(t);
  const sig = await startTurnSignaling(t, first.port, first.secret);
  const [a, b] = await t.pair({ server: sig, query: 'relay=1', timeout: 30000 });
  await first.proc.stop('SIGKILL');
  await Promise.all([a, b].map((p) => p.waitFor(() => window.__demo.peers()[0]?.state !== 'connected', null, 'the connection noticing the dead relay', 30000)));
  await startRelay(t, { port: first.port, secret: first.secret });
  await Promise.all([a.connected(1, 45000), b.connected(1, 45000)]);
  const restarts = await a.eval(() => window.__demo.events.filter((e) => e.type === 'log' && /^ICE restart/.test(e.message)).length)
    + await b.eval(() => window.__demo.events.filter((e) => e.type === 'log' && /^ICE restart/.test(e.message)).length);
  assert(restarts >= 1, 'ICE was restarted');
  const info = Object.values(await a.stats())[0];
  assert(info.localType === 'relay' && info.remoteType === 'relay', `relay/relay again: ${JSON.stringify(info)}`);
  await a.sayTo(b, 'we are back');
});

test('peer unreachable: relay-only with a dead TURN server shows the peer as unreachable', async (t) => {
  const deadPort = await freePort();
  const sig = await startTurnSignaling(t, deadPort, 'unused-secret', 'signaling-deadturn');
  const [a, b] = await t.joinedPair({ server: sig, query: 'relay=1&unreachable_ms=4000' });
  for (const p of [a, b]) {
    await p.waitFor(() => document.querySelector('.tile-remote')?.dataset.state === 'unreachable', null, 'the tile in the unreachable state', 15000);
    const shown = await p.eval(() => ({ pill: document.querySelector('.conn .conn-state').textContent, note: document.querySelector('.tile-remote .tile-note').textContent }));
    assert(shown.pill === 'Unreachable' && /no network path/i.test(shown.note), `${p.name}: unreachable is explained: ${JSON.stringify(shown)}`);
  }
  await t.screenshot(a, 'state-peer-unreachable.png');
  // Chat says why a message did not go out.
  await a.say('anyone?');
  const note = await a.eval(() => document.querySelector('#chat-log .msg.mine .msg-note')?.textContent || '');
  assert(/not delivered/.test(note), `undelivered message is flagged: ${note}`);
});

test('TURN refused: relay-only with a relay that does not share the TURN secret says so in the chat', async (t) => {
  const { port } = await startRelay(t);
  const sig = await startTurnSignaling(t, port, 'not-the-relays-secret', 'signaling-wrongsecret');
  const [a, b] = await t.joinedPair({ server: sig, query: 'relay=1' });
  for (const p of [a, b]) {
    await p.waitFor(() => window.__demo.events.some((e) => e.type === 'turn-error' && e.code === 401), null, 'a turn-error 401 event', 20000);
    const lines = await p.eval(() => [...document.querySelectorAll('#chat-log .system')].map((n) => n.textContent).filter((s) => /TURN credentials/.test(s)));
    assert(lines.length === 1 && /same TURN secret/.test(lines[0]), `${p.name}: one line explains the refused credentials: ${JSON.stringify(lines)}`);
  }
});

/** A relay registered in the fleet at `redis` as `id`: { id, proc, addr: '127.0.0.1:PORT' }. */
async function startFleetRelay(t, redis, id) {
  const relayBin = requireBin('RELAY_BIN', 'relay');
  const proc = t.track(new Proc(`relay-${id}`, relayBin, [
    '--listen', '127.0.0.1:0', '--no-tcp', '--admin-listen', 'none', '--relay-ip', '127.0.0.1',
    '--allow-loopback-peers', '--register', redis, '--node-id', id, '--node-heartbeat', '200ms',
    // A lease a loaded machine's stalls do not outlast (a live relay taken for dead would
    // move the room twice), short enough that a killed one is soon known dead.
    '--node-lease', '3s', '--drain-timeout', '30s',
  ]));
  const m = await proc.waitForLine(/^listening udp (\S+)/, 20000, `relay ${id} listening`);
  await proc.waitForLine(/^ready$/, 20000, `relay ${id} ready`);
  return { id, proc, addr: m[1] };
}

/**
 * Relays as a fleet (issue 13): two relay-only pages in a room of a three-relay fleet; the
 * room's relay is killed (SIGKILL) or drains (SIGTERM). The server moves the room (`ice_servers`
 * naming another relay) and both pages restart ICE ('relay moved') onto the new relay: the
 * connection panel shows it, and the chat goes on.
 */
async function relayFleetFailover(t, signal) {
  const redis = await startRedis(t);
  const relays = [];
  for (const id of ['r1', 'r2', 'r3']) relays.push(await startFleetRelay(t, redis, id));
  const sig = await t.signaling(['--redis', redis, '--fleet-refresh', '200ms'], 'signaling-fleet');
  const [a, b] = await t.pair({ server: sig, query: 'relay=1', timeout: 30000 });
  const shownRelay = (p) => p.eval(() => document.querySelector('.conn')?.dataset.relay || '');
  const old = await waitUntil(() => shownRelay(a), WAIT, 'the connection panel showing the relay');
  await waitUntil(async () => (await shownRelay(b)) === old, WAIT, `Bob's panel showing the room's relay ${old} too`);
  const victim = relays.find((r) => r.addr === old);
  assert(victim, `the room's relay ${old} is one of the fleet (${relays.map((r) => r.addr).join(', ')})`);
  const started = Date.now();
  process.kill(victim.proc.pid, signal);
  for (const p of [a, b]) {
    await p.waitFor((o) => {
      const relay = document.querySelector('.conn')?.dataset.relay;
      return !!relay && relay !== o && window.__demo.peers()[0]?.state === 'connected';
    }, old, 'the connection panel showing another relay', 30000);
  }
  const took = Date.now() - started;
  const now = await shownRelay(a);
  assert(relays.some((r) => r !== victim && r.addr === now), `Alice on another relay of the fleet: ${now}`);
  assert(await shownRelay(b) === now, `both pages on the room's new relay ${now}`);
  // A draining relay still works: the pages must not wait for it to exit (--drain-timeout 30s).
  assert(took < 15000, `moved ${took} ms after ${signal}`);
  for (const p of [a, b]) {
    const moves = await p.eval(() => ({
      restarts: window.__demo.events.filter((e) => e.type === 'ice-restart' && e.reason === 'relay moved').length,
      relayMoves: window.__demo.peers()[0].relayMoves,
      text: document.querySelector('.conn .c-relay').textContent,
    }));
    assert(moves.restarts === 1 && moves.relayMoves === 1, `${p.name}: one 'relay moved' ICE restart: ${JSON.stringify(moves)}`);
    assert(moves.text === now, `${p.name}: the panel names the relay: ${JSON.stringify(moves)}`);
  }
  await a.sayTo(b, 'on the new relay');
  await b.sayTo(a, 'heard you');
}

test('relay fleet: the room\'s relay dies mid-call (relay-only), both pages restart ICE onto its new relay', (t) => relayFleetFailover(t, 'SIGKILL'));
test('relay fleet: the room\'s relay drains mid-call (relay-only), both pages move to its new relay before it exits', (t) => relayFleetFailover(t, 'SIGTERM'));

async function interop(t, { cliFirst = false, relay = false, turnTtl, initScript, closeSentOn = false } = {}) {
  const peerBin = requireBin('PEER_BIN', 'peer');
  let server = t.shared.signaling;
  const cliArgs = ['--name', 'rusty', '--bind', '127.0.0.1'];
  let query = '';
  if (relay) {
    const r = await startRelay(t);
    server = await startTurnSignaling(t, r.port, r.secret, 'signaling-turn', turnTtl ? ['--turn-ttl', turnTtl] : []);
    cliArgs.push('--relay-only');
    query = 'relay=1';
  }
  const startCli = async () => {
    const cli = t.track(new Proc('peer', peerBin, ['join', `${server.ws}/${t.room}`, ...cliArgs], { env: { RUST_LOG: 'info' } }));
    await cli.waitForLine(/^\* joined /, WAIT, 'the CLI joining the room');
    return cli;
  };
  let cli = cliFirst ? await startCli() : null;
  const a = await t.open('Alice', { server, query, initScript });
  await a.joined();
  if (!cli) cli = await startCli();
  await a.connected(1, 30000);
  const name = await a.eval(() => window.__demo.peers()[0].name);
  assert(name === 'rusty', `the CLI peer is listed by name: ${name}`);
  await a.say('hello from the browser');
  await cli.waitForLine(/^Alice: hello from the browser$/, WAIT, 'the browser\'s message, printed with the sender\'s name');
  cli.send('hello from rust');
  await a.chatFrom('hello from rust');
  // A few more lines, in order.
  for (let i = 1; i <= 5; i += 1) cli.send(`line ${i}`);
  await a.chatFrom('line 5');
  const lines = await a.eval(() => window.__demo.chat.filter((m) => /^line \d$/.test(m.text)).map((m) => m.text));
  assert(JSON.stringify(lines) === JSON.stringify(['line 1', 'line 2', 'line 3', 'line 4', 'line 5']), `in order: ${lines}`);
  // The page restarts ICE (its offer, the CLI's answer), and the chat goes on: the CLI's answer
  // claims the DTLS role in force (it claimed the client's role every time, also after it had
  // offered first and become the server, and Chrome refused every such answer).
  const restartedBefore = await a.eval(() => window.__demo.events.filter((e) => e.type === 'ice-restart').length);
  // The CLI's ICE username fragment: an applied answer to the restart carries a new one.
  const cliUfrags = () => [...window.__demo.room.peers.values()].map((p) => (/a=ice-ufrag:(\S+)/.exec(p.pc.currentRemoteDescription?.sdp || '') || [])[1]);
  const before = await a.eval(cliUfrags);
  await a.eval(() => { for (const p of window.__demo.room.peers.values()) p.restartIce('a test'); });
  await a.waitFor(([ufrags, old]) => {
    const now = new Function(`return (${ufrags})()`)();
    return [...window.__demo.room.peers.values()].every((p, i) => p.pc.signalingState === 'stable' && p.pc.iceConnectionState === 'connected' && now[i] !== old[i]);
  }, [cliUfrags.toString(), before], 'the page\'s ICE restart answered (new CLI credentials) and connected');
  assert(await a.eval(() => window.__demo.events.filter((e) => e.type === 'ice-restart').length) > restartedBefore, 'the page restarted ICE');
  cli.send('after the restart');
  await a.chatFrom('after the restart');
  if (turnTtl) await cli.waitForLine(/^\* ice-restart .*reason=fresh-credentials/, WAIT, 'the CLI restarting ICE onto fresh TURN credentials');
  if (closeSentOn) {
    // The page closes the channel the CLI's chat arrives on (the page's `chat` or the CLI's
    // `reliable`, whichever opened first at the CLI): the CLI goes on on the other one.
    const closed = await a.eval(() => { const dc = window.__lastMessageChannel; dc.close(); return dc.label; });
    await cli.waitForLine(/^\* channel-closed .*kind=reliable/, WAIT, `the CLI seeing ${closed} close`);
    cli.send('after the channel closed');
    await a.chatFrom('after the channel closed');
  }
  // The CLI offers once at most (its first data channels, when it is the polite side), and
  // for each ICE restart of its own once, or twice when the page restarted at the same moment
  // (glare: the page ignores the CLI's offer, the CLI answers the page's, then offers again). It
  // rejects the page's audio and video (it has no codecs), and webrtc once asked it for a new
  // offer after each answer: about 20 a second, until the signaling rate limit cut in.
  await sleep(1500);
  const offers = await a.eval(() => window.__demo.events.filter((e) => /^<- offer from rusty /.test(e.message || '')).length);
  const restarts = cli.lines.filter((l) => /^\[out\] \* ice-restart /.test(l)).length;
  if (offers > 1 + 2 * restarts) {
    const timeline = await a.eval(() => window.__demo.events.filter((e) => /offer|answer|glare/.test(e.message || '')).map((e) => `${e.t} ${e.message.slice(0, 70)}`));
    throw new Error(`assertion failed: the CLI made ${offers} offers and ${restarts} ICE restarts:\n    ${timeline.join('\n    ')}\n${cli.tail(40)}`);
  }
  // `selected-pair` once when the first reliable channel opens (the page's `chat` and the CLI's
  // `reliable` are two: it was printed for each), and once per ICE restart at most, its own or
  // the page's (the CLI prints the pair an answered restart moved it to too).
  const pairs = cli.lines.filter((l) => /^\[out\] \* selected-pair /.test(l)).length;
  const pageRestarts = await a.eval(() => window.__demo.events.filter((e) => e.type === 'ice-restart').length);
  assert(pairs >= 1 && pairs <= 1 + restarts + pageRestarts, `the CLI printed selected-pair ${pairs} times with ${restarts} ICE restarts of its own and ${pageRestarts} of the page:\n${cli.tail(40)}`);
  // The CLI kept its connection: the page restarts ICE as it should (Chrome may keep its ICE
  // credentials in an answer to the CLI's restart, and still checks with the CLI's new ones).
  const replaced = cli.lines.filter((l) => /^\[out\] \* connection-replaced /.test(l));
  assert(replaced.length === 0, `the CLI replaced its connection to the page: ${replaced.join(' | ')}`);
  // Every answer of the CLI applies: one that claimed the other DTLS role than the one in force
  // ("Failed to set SSL role for the transport") left the page's offers unanswered for good.
  const refused = await a.eval(() => window.__demo.events.filter((e) => /^signal answer from rusty: /.test(e.message || '')).map((e) => e.message));
  assert(refused.length === 0, `the page could not apply the CLI's answers: ${refused.join(' | ')}`);
  if (relay) {
    const info = Object.values(await a.stats())[0];
    assert(info.localType === 'relay' && info.remoteType === 'relay', `browser <-> CLI pair is relay/relay: ${JSON.stringify(info)}`);
    await cli.waitForLine(/selected-pair .*local=relay remote=relay/, WAIT, 'the CLI reporting a relay/relay pair');
  }
}

test('interop: a browser and the Rust peer CLI exchange chat messages both ways (browser first)', (t) => interop(t));
test('interop: the Rust peer CLI joins first, the browser second', (t) => interop(t, { cliFirst: true }));
test('interop: browser and Rust peer CLI, relay-only through our relay', (t) => interop(t, { relay: true }));
test('interop: relay-only with fresh TURN credentials every 4.8 s, the page applies every answer of the CLI', (t) => interop(t, { relay: true, turnTtl: '6s' }));

/**
 * Page script: the page's first `negotiationneeded` is handled 1 s late, so the CLI's first
 * offer (it is the polite newcomer, and opens the channels) is answered before the page offers:
 * the page answers `active`, and the CLI is the DTLS server from then on.
 */
const pageOffersLate = () => {
  const handler = Object.getOwnPropertyDescriptor(RTCPeerConnection.prototype, 'onnegotiationneeded');
  Object.defineProperty(RTCPeerConnection.prototype, 'onnegotiationneeded', {
    configurable: true,
    get() { return handler.get.call(this); },
    set(fn) {
      let first = true;
      handler.set.call(this, fn && ((e) => {
        if (!first) return fn.call(this, e);
        first = false;
        setTimeout(() => fn.call(this, e), 1000);
      }));
    },
  });
};
// The CLI's answers to the page's later offers (the page's own channels, then its ICE restart)
// say `passive`: they said `active` every time, and Chrome refused them ("Failed to set SSL role
// for the transport").
test('interop: the CLI offers first (the DTLS server), and the page applies every later answer of the CLI', (t) => interop(t, { initScript: pageOffersLate }));

/**
 * Our relay, a restartable signaling server (`--reconnect-after 200ms`) handing out its
 * credentials, the CLI (`rusty`, relay-only) and a relay-only page (`Alice`) connected to it.
 * `turn`: the signaling flags to start a server with the same relay again.
 */
async function relayOnlyCliAndPage(t, label) {
  const peerBin = requireBin('PEER_BIN', 'peer');
  const r = await startRelay(t);
  const turn = ['--turn-url', `turn:127.0.0.1:${r.port}?transport=udp`, '--turn-secret', r.secret];
  const sig = await t.signaling(['--reconnect-after', '200ms', ...turn], label);
  const cli = t.track(new Proc('peer', peerBin, ['join', `${sig.ws}/${t.room}`, '--name', 'rusty', '--bind', '127.0.0.1', '--relay-only'], { env: { RUST_LOG: 'info' } }));
  await cli.waitForLine(/^\* joined /, WAIT, 'the CLI joining the room');
  const a = await t.open('Alice', { server: sig, query: 'relay=1' });
  await a.joined();
  await a.connected(1, 30000);
  return { r, turn, sig, cli, a };
}

// After a restart of signaling neither session can be resumed. The page starts its
// connections anew (its peers are gone); the CLI kept its connection for the peer of the same
// name, and gives it up for the page's new one (it went on with the old one, which the page
// had closed: no chat either way).
// Relay-only: the new connection needs the candidates the page trickles after its offer.
test('interop: signaling is killed and comes back, the page starts anew, and it chats with the CLI again (relay-only)', async (t) => {
  const { turn, sig, cli, a } = await relayOnlyCliAndPage(t, 'signaling-interop-kill');
  await a.say('before the restart');
  await cli.waitForLine(/^Alice: before the restart$/, WAIT, 'the page\'s line before the restart');
  await sig.proc.stop('SIGKILL');
  await a.waitFor(() => document.body.dataset.signaling === 'reconnecting', null, 'the page reconnecting', 10000);
  const sig2 = await t.signaling(turn, 'signaling-interop-back', sig.addr);
  await cli.waitForLine(/^\* signaling-rejoined /, WAIT, 'the CLI joining again');
  await a.joined();
  await a.connected(1, 30000);
  await a.say('after the restart');
  await cli.waitForLine(/^Alice: after the restart$/, WAIT, 'the page\'s line after the restart');
  cli.send('from rust after the restart');
  await a.chatFrom('from rust after the restart');
  // Chrome's stats may name no selected pair for a moment on a connection that just started.
  let info = null;
  for (let i = 0; i < 20 && !(info?.localType === 'relay' && info?.remoteType === 'relay'); i += 1) {
    if (i > 0) await sleep(250);
    info = Object.values(await a.stats())[0];
  }
  assert(info.localType === 'relay' && info.remoteType === 'relay', `relay/relay after the restart: ${JSON.stringify(info)}`);
  // The CLI shows the path of the connection that replaced the first one, too.
  await cli.waitForLine(/^\* selected-pair .*local=relay remote=relay/, WAIT, 'the new connection\'s selected-pair');
  const pairs = cli.lines.filter((l) => /^\[out\] \* selected-pair /.test(l)).length;
  assert(pairs >= 2, `selected-pair before and after the restart: ${pairs}\n${cli.tail(30)}`);
});

// The relay hangs, then signaling restarts: a line the CLI sent just before went into a path
// that was gone, and SCTP never acknowledged it. The page starts anew, the CLI's connection is
// replaced, and the line goes again, first, on the new one (it was lost with the old one).
test('interop: a line the CLI sent into a dead path goes again on the connection that replaces it (relay-only)', async (t) => {
  const { r, turn, sig, cli, a } = await relayOnlyCliAndPage(t, 'signaling-interop-resend');
  cli.send('before the hang');
  await a.chatFrom('before the hang');
  // Its acknowledgement is back before the relay hangs: the page's reply carries it (SCTP
  // bundles a pending acknowledgement with data, where alone it may wait 200 ms).
  await a.say('got it');
  await cli.waitForLine(/^Alice: got it$/, WAIT, 'the page\'s reply at the CLI');
  await sleep(300);
  process.kill(r.proc.child.pid, 'SIGSTOP');
  cli.send('into the dead path');
  await sleep(300);
  await sig.proc.stop('SIGKILL');
  const sig2 = await t.signaling(turn, 'signaling-interop-resend-back', sig.addr);
  await cli.waitForLine(/^\* signaling-rejoined /, WAIT, 'the CLI joining again');
  await a.joined();
  // The page's new offer replaces the CLI's connection; then the relay is back.
  await cli.waitForLine(/^\* connection-replaced .*reason=peer-started-over/, WAIT, 'the CLI giving up its old connection');
  process.kill(r.proc.child.pid, 'SIGCONT');
  await a.connected(1, 30000);
  await a.chatFrom('into the dead path');
  await cli.waitForLine(/^\* resent .*messages=1\b/, WAIT, 'the CLI saying it sent the line again');
  cli.send('after the restart');
  await a.chatFrom('after the restart');
});

/** Page script: `window.__lastMessageChannel` is the data channel the last message came in on. */
const recordMessageChannel = () => {
  const handler = Object.getOwnPropertyDescriptor(RTCDataChannel.prototype, 'onmessage');
  Object.defineProperty(RTCDataChannel.prototype, 'onmessage', {
    configurable: true,
    get() { return handler.get.call(this); },
    set(fn) { handler.set.call(this, fn && ((e) => { window.__lastMessageChannel = this; return fn.call(this, e); })); },
  });
};
// Two chat channels are open between the page and the CLI (the page's `chat`, the CLI's
// `reliable`); the one the CLI sends on closes, and its chat moves to the other (it stopped:
// no channel to send on, lines kept for a peer that never came back).
test('interop: the channel the CLI chats on closes, and its chat goes on on the other one', (t) => interop(t, { initScript: recordMessageChannel, closeSentOn: true }));

/** Page script: the page opens its `canvas` channel ordered (a client other than ours may). */
const orderedCanvas = () => {
  const create = RTCPeerConnection.prototype.createDataChannel;
  RTCPeerConnection.prototype.createDataChannel = function createDataChannel(label, init) {
    return create.call(this, label, label === 'canvas' ? { ...init, ordered: true } : init);
  };
};
// The CLI tells channels by label first: an ordered `canvas` opened after `chat` neither takes
// the chat it sends (it used to: the page never showed the CLI's lines) nor is printed as chat.
test('interop: the Rust peer CLI (first in the room) chats on `chat` when the page opens `canvas` ordered too', (t) => interop(t, { cliFirst: true, initScript: orderedCanvas }));

test('example: the minimal example app (README) calls and chats with the demo page', async (t) => {
  const base = t.shared.signaling.http;
  const ex = await t.open('example', { url: `${base}/examples/minimal.html?room=${t.room}&name=Minimal` });
  await ex.waitFor(() => document.getElementById('state').textContent === 'joined', null, 'the example joined');
  const demo = await t.open('Alice');
  await demo.connected(1);
  await demo.say('hello example');
  await ex.waitFor(() => [...document.querySelectorAll('#log li')].some((li) => li.textContent === 'Alice: hello example'), null, 'the demo\'s message in the example');
  await ex.page.fill('#text', 'hello demo');
  await ex.page.press('#text', 'Enter');
  await demo.chatFrom('hello demo');
  await ex.waitFor(() => [...document.querySelectorAll('#videos video')].some((v) => v.id.startsWith('v-') && v.videoWidth > 0), null, 'the demo\'s video in the example');
  await demo.waitFor(() => document.querySelector('.tile-remote video')?.videoWidth > 0, null, 'the example\'s video in the demo');
  // A reload leaves the room (WebRTCRoom's leaveOnPageHide): the demo sees the old peer go at
  // once, not after the resume grace period, and the reloaded page comes back as a new peer.
  const before = await ex.eval(() => window.__room.peerId);
  await ex.page.reload();
  // Within 15 s (a reload on a loaded machine): half the 30 s grace it would wait otherwise.
  await demo.waitFor((id) => !window.__demo.room.peers.has(id), before, 'the reloaded page\'s old peer gone at once', 15000);
  await ex.waitFor(() => document.getElementById('state').textContent === 'joined', null, 'the example joined again');
  await demo.connected(1);
});

test('rooms from the URL: / generates one, ?room= and /r/<room> join it, the invite link copies', async (t) => {
  const base = t.shared.signaling.http;
  const gen = await t.open('Gen', { url: `${base}/?name=Gen` });
  await gen.joined();
  const where = await gen.eval(() => ({ path: location.pathname, room: window.__demo.roomName }));
  assert(/^\/r\/[a-z]+-[a-z]+-\d{4}$/.test(where.path) && where.path === `/r/${where.room}`, `a generated room in the address bar: ${JSON.stringify(where)}`);
  const q = await t.open('Query', { url: `${base}/?room=${where.room}&name=Query` });
  await q.connected(1);
  assert(await q.eval(() => window.__demo.roomName) === where.room, '?room= joins the same room');
  await gen.page.context().grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base });
  await gen.page.click('#copy-link');
  await gen.waitFor(() => document.getElementById('copy-label').textContent === 'Link copied!', null, 'copy confirmation');
  const copied = await gen.eval(() => navigator.clipboard.readText());
  assert(copied === `${base}/r/${where.room}`, `the invite link was copied: ${copied}`);
  const bad = await t.open('Bad', { url: `${base}/r/${'x'.repeat(70)}?name=Bad` });
  await bad.joined();
  assert(await bad.eval(() => window.__demo.roomName) === 'x'.repeat(64), 'an invalid room name is normalised (here: cut to 64)');
  const said = await bad.eval(() => document.getElementById('banner').hidden ? '' : document.getElementById('banner-text').textContent);
  assert(/not a valid room name/.test(said), `and the page says so: ${said}`);
});

/** Page script: keeps every local media track and RTCPeerConnection the page makes, for checks. */
const keepMediaAndConnections = () => {
  window.__tracks = [];
  window.__pcs = [];
  const real = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = async (c) => {
    const s = await real(c);
    window.__tracks.push(...s.getTracks());
    return s;
  };
  const RealPC = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends RealPC {
    constructor(...args) { super(...args); window.__pcs.push(this); }
  };
};

const systemLines = (p) => p.eval(() => [...document.querySelectorAll('#chat-log .msg.system')].map((li) => li.textContent));

test('leave: tracks stop, connections close, a "you left" screen offers Rejoin; the others see one line', async (t) => {
  const a = await t.open('Alice', { initScript: keepMediaAndConnections });
  await a.joined();
  const b = await t.open('Bob');
  await b.joined();
  const c = await t.open('Carol');
  await Promise.all([a.connected(2), b.connected(2), c.connected(2)]);
  await a.waitFor(() => document.body.dataset.media === 'granted' && window.__tracks.some((tr) => tr.kind === 'video'), null, 'Alice\'s camera on');
  await a.page.click('#leave');
  await a.waitFor(() => !document.getElementById('left-screen').hidden, null, 'the "you left" screen');
  const after = await a.eval(() => ({
    live: window.__tracks.filter((tr) => tr.readyState !== 'ended').map((tr) => tr.kind),
    open: window.__pcs.filter((pc) => pc.signalingState !== 'closed').length,
    peers: window.__demo.room.peers.size,
    tiles: document.querySelectorAll('.tile-remote').length,
    chatDisabled: document.getElementById('chat-input').disabled && document.getElementById('chat-send').disabled,
    rejoin: document.getElementById('rejoin').offsetParent !== null,
    controls: document.querySelector('.controls').offsetParent !== null,
    signaling: document.body.dataset.signaling,
    screen: document.getElementById('left-screen').textContent,
  }));
  assert(after.live.length === 0, `every local track stopped: still live ${after.live}`);
  assert(after.open === 0, `every RTCPeerConnection closed: ${after.open} open`);
  assert(after.peers === 0 && after.tiles === 0, `no peers or tiles left: ${JSON.stringify(after)}`);
  assert(after.chatDisabled, 'chat is disabled');
  assert(after.rejoin && !after.controls, `Rejoin shown, call controls gone: ${JSON.stringify(after)}`);
  assert(/you left/i.test(after.screen), `the screen says so: ${after.screen}`);
  await a.waitFor(() => document.body.dataset.signaling === 'closed', null, 'signaling closed');
  // Alice's own log says nothing about Bob or Carol leaving: they stayed.
  const aLines = await systemLines(a);
  assert(!aLines.some((l) => / left/.test(l)), `no "left" lines at Alice: ${JSON.stringify(aLines)}`);
  // Bob and Carol: one line about Alice, nothing about each other, and still connected.
  for (const [p, other] of [[b, 'Carol'], [c, 'Bob']]) {
    await p.waitFor(() => window.__demo.peers().length === 1, null, 'Alice gone');
    await p.connected(1);
    const lines = await systemLines(p);
    assert(lines.filter((l) => /^Alice left/.test(l)).length === 1, `${p.name}: one "Alice left" line: ${JSON.stringify(lines)}`);
    assert(!lines.some((l) => l.startsWith(`${other} left`)), `${p.name}: no "${other} left" line: ${JSON.stringify(lines)}`);
  }
  await b.sayTo(c, 'still here');
  await t.screenshot(a, 'state-left.png');
  // Rejoin puts Alice back in the room.
  await Promise.all([a.page.waitForNavigation(), a.page.click('#rejoin')]);
  await a.connected(2);
});

test('room names: an invalid name in a link is normalised the same for everyone, or refused; never a random room', async (t) => {
  const base = t.shared.signaling.http;
  const suffix = t.room.slice(-6);
  const cases = [
    [`My Room! ${suffix}`, `my-room-${suffix}`],
    [`Café ${suffix}`, `cafe-${suffix}`],
    [`${suffix}${'x'.repeat(70)}`, `${suffix}${'x'.repeat(58)}`],
  ];
  for (const [asked, want] of cases) {
    const url = `${base}/r/${encodeURIComponent(asked)}`;
    const one = await t.open(`One ${want.slice(0, 12)}`, { url: `${url}?name=One` });
    await one.joined();
    const two = await t.open(`Two ${want.slice(0, 12)}`, { url: `${url}?name=Two` });
    await Promise.all([one.connected(1), two.connected(1)]);
    for (const p of [one, two]) {
      const got = await p.eval(() => ({ room: window.__demo.roomName, path: location.pathname, banner: document.getElementById('banner-text').textContent }));
      assert(got.room === want && got.path === `/r/${want}`, `"${asked}" -> "${want}": ${JSON.stringify(got)}`);
      assert(got.banner.includes(want) && /not a valid room name/.test(got.banner), `the page says which room: ${got.banner}`);
    }
    // The next case gets the machine to itself: no calls left running behind it.
    await Promise.all([one, two].map((p) => p.context.close()));
  }
  // Nothing usable (or `..`, which a URL path cannot carry): refused, and the page joins no
  // room at all.
  for (const url of [`${base}/r/${encodeURIComponent('!!!')}?name=R`, `${base}/?room=..&name=R`]) {
    const refused = await t.open('Refused', { url });
    await refused.waitFor(() => document.body.dataset.roomRefused === '1', null, `the refusal of ${url}`);
    await new Promise((r) => setTimeout(r, 1000));
    const state = await refused.eval(() => ({ signaling: document.body.dataset.signaling, path: location.pathname, banner: document.getElementById('banner-text').textContent }));
    assert(state.signaling === 'idle', `no room joined: ${JSON.stringify(state)}`);
    assert(/cannot be used as a room name/.test(state.banner), `the page says why: ${state.banner}`);
    if (url.includes('!!!')) await t.screenshot(refused, 'state-room-refused.png');
    await refused.context.close();
  }
});

test('phone: at 390 px the chat is an overlay with an unread count, names are not cut off, the invite uses the share sheet', async (t) => {
  const phone = { width: 390, height: 844 };
  const a = await t.open('Ada Lovelace');
  await a.joined();
  const stubShare = () => {
    window.__shared = [];
    navigator.share = async (data) => { window.__shared.push(data); };
  };
  const b = await t.open('Grace Brewster Hopper', { viewport: phone, initScript: stubShare });
  await Promise.all([a.connected(1), b.connected(1)]);
  const visible = (sel) => {
    const el = document.querySelector(sel);
    if (!el || el.getClientRects().length === 0) return false; // display: none, here or above
    const r = el.getBoundingClientRect();
    return r.width > 0 && r.height > 0 && r.top >= 0 && r.bottom <= innerHeight && r.left >= 0 && r.right <= innerWidth;
  };
  assert(!(await b.eval(visible, '#chat-card')) && await b.eval(visible, '#toggle-chat'), 'phone: chat closed, a Chat button in the bar');
  assert(!(await a.eval(visible, '#toggle-chat')) && await a.eval(visible, '#chat-card'), 'desktop: chat in the side column, no Chat button');
  await a.say('one');
  await a.sayTo(b, 'two');
  await b.waitFor(() => document.getElementById('chat-unread').textContent === '2', null, 'unread count 2');
  assert(await b.eval(visible, '#chat-unread'), 'the unread count is visible');
  await b.page.click('#toggle-chat');
  await b.waitFor(() => document.getElementById('chat-unread').hidden, null, 'unread cleared on opening');
  assert(await b.eval(visible, '#chat-card') && await b.eval(visible, '#chat-input'), 'the chat overlay is on screen with its input');
  const shown = await b.eval(() => [...document.querySelectorAll('#chat-log .msg-text')].map((x) => x.textContent));
  assert(shown.includes('one') && shown.includes('two'), `messages in the overlay: ${JSON.stringify(shown)}`);
  await t.screenshot(b, 'phone-chat.png');
  await b.page.click('#toggle-chat');
  // Names: whole, wrapped if need be.
  await b.waitFor(() => document.querySelectorAll('.tile-name').length === 2, null, 'two tiles');
  const names = await b.eval(() => [...document.querySelectorAll('.tile-name')].map((n) => ({ text: n.textContent, cut: n.scrollWidth > n.clientWidth + 1 })));
  assert(names.every((n) => !n.cut), `no name is cut off: ${JSON.stringify(names)}`);
  // The invite: the native share sheet on a phone, with a visible confirmation.
  await b.page.click('#copy-link');
  await b.waitFor(() => window.__shared.length === 1, null, 'navigator.share called');
  const shared = await b.eval(() => ({ ...window.__shared[0], want: `${location.origin}/r/${window.__demo.roomName}` }));
  assert(shared.url === shared.want, `the invite link was shared: ${JSON.stringify(shared)}`);
  assert(await b.eval(visible, '#copy-toast'), 'the "shared" confirmation is visible at 390 px');
  // A phone without a share sheet copies, and says so where it can be seen.
  const c = await t.open('Carol', { viewport: phone });
  await c.joined();
  const base = t.shared.signaling.http;
  await c.page.context().grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base });
  await c.eval(() => { delete Navigator.prototype.share; });
  await c.page.click('#copy-link');
  await c.waitFor(() => document.getElementById('copy-toast').textContent === 'Link copied!', null, 'copy confirmation');
  assert(await c.eval(visible, '#copy-toast'), 'the "copied" confirmation is visible at 390 px');
});

test('join screen: name (remembered), camera preview and devices; joining with the camera off and turning it on later', async (t) => {
  const base = t.shared.signaling.http;
  const url = `${base}/r/${t.room}`;
  const k = await t.open('Katherine', { url });
  await k.waitFor(() => !document.getElementById('prejoin').hidden, null, 'the join screen');
  await k.waitFor(() => document.getElementById('preview-video').videoWidth > 0, null, 'the camera preview');
  const before = await k.eval(() => ({
    signaling: document.body.dataset.signaling,
    cameras: document.getElementById('prejoin-camera').options.length,
    mics: document.getElementById('prejoin-mic').options.length,
    controls: document.querySelector('.controls').getClientRects().length,
  }));
  assert(before.signaling === 'idle', `not in the room before Join: ${JSON.stringify(before)}`);
  assert(before.cameras >= 1 && before.mics >= 1, `devices to pick from: ${JSON.stringify(before)}`);
  assert(before.controls === 0, 'no call controls on the join screen');
  await k.page.fill('#prejoin-name', 'Katherine Johnson');
  await k.page.click('#prejoin-cam-on + .switch-track');
  await k.waitFor(() => document.getElementById('preview-video').srcObject === null, null, 'the preview stops with the camera off');
  await t.screenshot(k, 'join-screen.png');
  await k.page.click('#prejoin-join');
  await k.joined();
  const b = await t.open('Bob');
  await Promise.all([k.connected(1), b.connected(1)]);
  const seen = await b.eval(() => window.__demo.peers()[0].name);
  assert(seen === 'Katherine Johnson', `Bob sees the chosen name: ${seen}`);
  const camera = await k.eval(() => ({ pressed: document.getElementById('toggle-cam').getAttribute('aria-pressed'), disabled: document.getElementById('toggle-cam').disabled }));
  assert(camera.pressed === 'true' && !camera.disabled, `camera shown off, and can be turned on: ${JSON.stringify(camera)}`);
  await new Promise((r) => setTimeout(r, 1000));
  assert(await b.eval(() => (document.querySelector('.tile-remote video')?.videoWidth || 0) === 0), 'no video from Katherine while her camera is off');
  await k.page.click('#toggle-cam');
  await b.waitFor(() => document.querySelector('.tile-remote video')?.videoWidth > 0, null, 'Katherine\'s video once she turns the camera on');
  // Her microphone plays on: the camera's track may come in a stream of its own, and the tile
  // must not show that stream alone.
  const played = await b.eval(() => document.querySelector('.tile-remote video').srcObject.getTracks().map((tr) => tr.kind).sort().join());
  assert(played === 'audio,video', `Bob's tile plays Katherine's microphone and camera: ${played}`);
  assert(await k.eval(() => document.getElementById('toggle-cam').getAttribute('aria-pressed')) === 'false', 'the camera button shows on');
  // The name is remembered for the next visit (same browser).
  const again = await k.context.newPage();
  await again.goto(`${base}/r/${t.room}-2`);
  await again.waitForFunction(() => !document.getElementById('prejoin').hidden, null, { timeout: WAIT });
  const remembered = await again.evaluate(() => document.getElementById('prejoin-name').value);
  assert(remembered === 'Katherine Johnson', `the name is remembered: ${remembered}`);
});

const sleep = (ms) => new Promise((r) => { setTimeout(r, ms); });

/** Page script: getUserMedia answers only when the page calls `__releaseCamera()` (a permission prompt left open). */
const holdCamera = () => {
  const real = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = (c) => new Promise((resolve, reject) => {
    window.__releaseCamera = () => real(c).then(resolve, reject);
  });
};

test('leave early: Leave while the camera prompt is open never joins; a closed client and a left room do not come back', async (t) => {
  const a = await t.open('Alice', { initScript: holdCamera });
  await a.waitFor(() => typeof window.__releaseCamera === 'function' && document.getElementById('leave').offsetParent !== null, null, 'the camera prompt open, Leave on screen');
  await a.page.click('#leave');
  await a.waitFor(() => !document.getElementById('left-screen').hidden, null, 'the "you left" screen');
  // Past the page's 3 s wait for the camera; then the prompt is answered, late.
  await sleep(3500);
  await a.eval(() => window.__releaseCamera());
  const b = await t.open('Bob', { query: 'media=0' });
  await b.joined();
  await sleep(1000);
  const alice = await a.eval(() => ({
    client: window.__demo.client.state,
    signaling: document.body.dataset.signaling,
    everJoined: window.__demo.events.some((e) => e.type === 'signaling' && (e.state === 'connecting' || e.state === 'joined')),
    camera: (document.getElementById('local-video').srcObject?.getTracks() || []).filter((tr) => tr.readyState === 'live').length,
  }));
  assert(alice.client === 'closed' && alice.signaling === 'closed' && !alice.everJoined, `Alice never joined: ${JSON.stringify(alice)}`);
  assert(alice.camera === 0, `no camera shown after leaving: ${JSON.stringify(alice)}`);
  const bobSees = await b.eval(() => window.__demo.client.peers.size);
  assert(bobSees === 0, `Bob is alone in the room: ${bobSees} other peer(s)`);
  // The client API: closed and failed are final.
  const api = await b.eval(async (room) => {
    const { SignalingClient } = await import('/signaling-client.js');
    const { WebRTCRoom } = await import('/webrtc-room.js');
    const ws = `${location.origin.replace(/^http/, 'ws')}/ws`;
    const settle = (p) => Promise.race([
      p.then((s) => `resolved ${s.peer_id}`, (e) => `rejected ${e.code}`),
      new Promise((r) => { setTimeout(() => r('pending'), 3000); }),
    ]);
    const c = new SignalingClient(ws, { room, name: 'Closed' });
    const states = [];
    c.addEventListener('state', (e) => states.push(e.detail.state));
    c.close();
    const afterClose = await settle(c.connect());
    const r = new WebRTCRoom(ws, { room, name: 'Left' });
    const first = await settle(r.join());
    r.leave();
    const again = await settle(r.join());
    return { afterClose, states, closedState: c.state, first, again, roomClient: r.client.state };
  }, `${t.room}-api`);
  assert(api.afterClose === 'rejected closed' && api.closedState === 'closed' && api.states.join() === 'closed', `connect() after close() rejects, the state stays closed: ${JSON.stringify(api)}`);
  assert(api.first.startsWith('resolved') && api.again === 'rejected closed' && api.roomClient === 'closed', `join() after leave() rejects: ${JSON.stringify(api)}`);
});

/** The first remote peer's transceivers and the kinds its senders send, at `p`. */
const sendersOf = (p) => p.eval(() => {
  const pc = [...window.__demo.room.peers.values()][0].pc;
  return { transceivers: pc.getTransceivers().length, sending: pc.getSenders().filter((s) => s.track).map((s) => s.track.kind).sort() };
});
const framesOf = async (p) => Object.values(await p.stats())[0]?.framesDecoded || 0;
const videoAt = (p, what) => p.waitFor(() => document.querySelector('.tile-remote')?.classList.contains('has-video') && document.querySelector('.tile-remote video').videoWidth > 0, null, what);
const placeholderAt = (p, what) => p.waitFor(() => !document.querySelector('.tile-remote').classList.contains('has-video'), null, what);

test('setLocalStream(null): no sender keeps a track, the other side\'s frames stop; the stream back uses the same senders', async (t) => {
  const [a, b] = await t.pair();
  await videoAt(b, 'Alice\'s video at Bob');
  const before = await sendersOf(a);
  assert(before.sending.join() === 'audio,video', `Alice sends audio and video: ${JSON.stringify(before)}`);
  await a.eval(() => window.__demo.room.setLocalStream(null));
  const none = await sendersOf(a);
  assert(none.sending.length === 0, `no sender keeps a track after setLocalStream(null): ${JSON.stringify(none)}`);
  // Frames already on their way (or in Bob's jitter buffer) may still be decoded for a while
  // on a loaded machine: within 10 s, Bob's count stands still for 1.5 s.
  const counts = [await framesOf(b)];
  for (let i = 0; i < 20; i++) {
    await sleep(500);
    counts.push(await framesOf(b));
    if (counts.length >= 4 && counts.at(-1) - counts.at(-4) <= 1) break;
  }
  assert(counts.length >= 4 && counts.at(-1) - counts.at(-4) <= 1, `Bob decodes no more frames of Alice: ${JSON.stringify(counts)}`);
  // And back: the same transceivers carry the camera again (no new m-section per change).
  await a.eval(() => window.__demo.room.setLocalStream(document.getElementById('local-video').srcObject));
  await videoAt(b, 'Alice\'s video at Bob again');
  const after = await sendersOf(a);
  assert(after.transceivers === before.transceivers && after.sending.join() === before.sending.join(), `the same senders again: ${JSON.stringify({ before, after })}`);
});

test('camera off: the other side shows the placeholder, not a black picture, and the picture once it is back on', async (t) => {
  const [a, b] = await t.pair();
  await videoAt(b, 'Alice\'s video at Bob');
  await a.page.click('#toggle-cam');
  await placeholderAt(b, 'the placeholder at Bob once Alice turned her camera off');
  const shown = await b.eval(() => {
    const tile = document.querySelector('.tile-remote');
    return { placeholder: getComputedStyle(tile.querySelector('.tile-placeholder')).display !== 'none', note: tile.querySelector('.tile-note').textContent };
  });
  assert(shown.placeholder && /camera off/i.test(shown.note), `Bob sees Alice's placeholder: ${JSON.stringify(shown)}`);
  await t.screenshot(b, 'remote-camera-off.png');
  // Her microphone still goes to Bob while the camera is off.
  assert((await sendersOf(a)).sending.join() === 'audio', 'Alice still sends audio');
  await a.page.click('#toggle-cam');
  await videoAt(b, 'Alice\'s video back at Bob');
});

test('channels: each data channel opens once (one channel-open per channel, ours and theirs)', async (t) => {
  const [a, b] = await t.pair();
  const countOpens = () => {
    const out = {};
    for (const e of window.__demo.events) if (e.type === 'channel-open') out[e.label] = (out[e.label] || 0) + 1;
    return out;
  };
  // `pair` waits for chat and canvas only: wait for every channel, then look for a second
  // open of any of them a while later.
  for (const p of [a, b]) {
    await p.waitFor(() => {
      const n = {};
      for (const e of window.__demo.events) if (e.type === 'channel-open') n[e.label] = (n[e.label] || 0) + 1;
      return n.chat >= 2 && n.canvas >= 2 && n.cursor >= 2;
    }, null, 'both sides of every channel open', 15000);
  }
  await sleep(500);
  for (const p of [a, b]) {
    const counts = await p.eval(countOpens);
    // Each side opens its own chat, canvas and cursor channels and accepts the other's.
    assert(counts.chat === 2 && counts.canvas === 2 && counts.cursor === 2, `${p.name}: channel-open per label: ${JSON.stringify(counts)}`);
  }
});

test('server refusals: at its room limit, or its connections per address, the page says what the server refused (not "unreachable")', async (t) => {
  const cases = [
    { args: ['--max-rooms', '1'], code: 'too_many_rooms', otherRoom: true },
    { args: ['--max-connections-per-ip', '1'], code: 'too_many_connections', otherRoom: false },
  ];
  for (const c of cases) {
    const sig = await t.signaling(c.args, `signaling-${c.code}`);
    const a = await t.open(`Alice ${c.code}`, { server: sig, query: 'media=0' });
    await a.joined();
    const b = await t.open(`Bob ${c.code}`, { server: sig, query: 'media=0', room: c.otherRoom ? `${t.room}-2` : t.room });
    await b.waitFor(() => document.body.dataset.signaling === 'reconnecting' && window.__demo.client.stateInfo?.serverError, null, `the ${c.code} refusal`);
    const shown = await b.eval(() => ({
      status: document.getElementById('status-text').textContent,
      banner: document.getElementById('banner-text').textContent,
      serverError: window.__demo.client.stateInfo.serverError,
    }));
    assert(shown.serverError.code === c.code, `the reconnecting state carries the server's code: ${JSON.stringify(shown)}`);
    assert(shown.banner.includes(c.code) && !/can't reach/i.test(shown.banner) && shown.status === 'Server busy', `the page says what was refused: ${JSON.stringify(shown)}`);
    if (c.code === 'too_many_rooms') await t.screenshot(b, 'state-server-refused.png');
    // Still retrying: once Alice leaves, Bob gets in.
    await a.page.click('#leave');
    await b.eval(() => window.__demo.client.reconnectNow());
    await b.joined();
    await Promise.all([a, b].map((p) => p.context.close()));
  }
});

test('origin refused: a server that does not allow the page\'s origin is named as the reason', async (t) => {
  const sig = await t.signaling(['--allowed-origin', 'https://app.example.com'], 'signaling-origin');
  const a = await t.open('Alice', { server: sig, query: 'media=0' });
  await a.waitFor(() => document.body.dataset.signaling === 'failed', null, 'failed state');
  const banner = await a.eval(() => document.getElementById('banner-text').textContent);
  assert(/origin/i.test(banner) && banner.includes(new URL(sig.http).origin) && !/access token/i.test(banner), `the origin is the reason shown: ${banner}`);
});

test('relay only without TURN: a server that lists no TURN server has the switch disabled, and says why', async (t) => {
  const a = await t.open('Alice', { query: 'media=0' });
  await a.joined();
  const shown = await a.eval(() => ({
    turn: window.__demo.client.iceServers.flatMap((s) => [].concat(s.urls)).filter((u) => /^turns?:/.test(u)),
    disabled: document.getElementById('relay-only').disabled,
    title: document.getElementById('relay-only').closest('.switch').title,
    note: document.getElementById('relay-note').hidden ? '' : document.getElementById('relay-note').textContent,
  }));
  assert(shown.turn.length === 0, `the shared server lists no TURN server: ${JSON.stringify(shown)}`);
  assert(shown.disabled && /no TURN/i.test(shown.title) && /no TURN/i.test(shown.note), `the switch is disabled and says why: ${JSON.stringify(shown)}`);
  // A click on the disabled switch changes nothing.
  await a.page.click('.switch:has(#relay-only) .switch-track', { force: true });
  assert(await a.eval(() => !document.getElementById('relay-only').checked && !window.__demo.room.relayOnly), 'relay-only stays off');
});

test('invite link: a page on another signaling server (signal=) invites there', async (t) => {
  const other = await t.signaling([], 'signaling-other');
  const a = await t.open('Alice', { query: `media=0&signal=${encodeURIComponent(other.ws)}` });
  await a.joined();
  const base = t.shared.signaling.http;
  await a.page.context().grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base });
  await a.page.click('#copy-link');
  await a.waitFor(() => document.getElementById('copy-label').textContent === 'Link copied!', null, 'copy confirmation');
  const link = await a.eval(() => navigator.clipboard.readText());
  assert(link === `${base}/r/${t.room}?signal=${encodeURIComponent(other.ws)}`, `the invite keeps signal=: ${link}`);
  const b = await t.open('Bob', { url: `${link}&name=Bob&media=0` });
  await Promise.all([a.connected(1), b.connected(1)]);
});

/** Page script: the first join this tab sends names someone the server refuses (a bell character). */
const refusedNameOnce = () => {
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function sendTampered(data) {
    if (typeof data === 'string' && data.includes('"type":"join"') && !sessionStorage.getItem('tampered')) {
      sessionStorage.setItem('tampered', '1');
      const m = JSON.parse(data);
      m.name = 'Bell\u0007';
      return send.call(this, JSON.stringify(m));
    }
    return send.call(this, data);
  };
};

test('names: what the server refuses is cleaned from links, refused with a reason in the join form, and a refused name can be changed', async (t) => {
  const base = t.shared.signaling.http;
  const emoji = `a${'\u{1F600}'.repeat(40)}`;
  const cases = [
    ['two\nlines', 'two lines'],
    [`\u202Eevil`, 'evil'],
    ['Ali\u200Bce', 'Alice'],
    [emoji, emoji], // 41 characters, 81 UTF-16 units: not cut, never split
    [`${'\u{1F600}'.repeat(70)}`, '\u{1F600}'.repeat(64)],
  ];
  for (const [asked, want] of cases) {
    const p = await t.open('Named', { url: `${base}/r/${t.room}?media=0&name=${encodeURIComponent(asked)}` });
    await p.joined();
    const sent = await p.eval(() => window.__demo.client.options.name);
    assert(sent === want, `${JSON.stringify(asked)} joins as ${JSON.stringify(want)}: ${JSON.stringify(sent)}`);
    await p.context.close();
  }
  // Spaces alone: the remembered (or a new) name instead.
  const blank = await t.open('Blank', { url: `${base}/r/${t.room}?media=0&name=${encodeURIComponent('   ')}` });
  await blank.joined();
  const blankName = await blank.eval(() => window.__demo.client.options.name);
  assert(blankName && blankName.trim() === blankName, `a real name instead of spaces: ${JSON.stringify(blankName)}`);
  await blank.context.close();
  // The join form refuses, with the reason, and lets a good name through.
  const f = await t.open('Form', { url: `${base}/r/${t.room}` });
  await f.waitFor(() => !document.getElementById('prejoin').hidden, null, 'the join screen');
  const attempt = async (name) => {
    await f.page.fill('#prejoin-name', name);
    await f.page.click('#prejoin-join');
    await sleep(300);
    return f.eval(() => ({ prejoin: !document.getElementById('prejoin').hidden, error: document.getElementById('prejoin-name-error').hidden ? '' : document.getElementById('prejoin-name-error').textContent, signaling: document.body.dataset.signaling }));
  };
  const spaces = await attempt('   ');
  assert(spaces.prejoin && /spaces/i.test(spaces.error) && spaces.signaling === 'idle', `spaces alone refused: ${JSON.stringify(spaces)}`);
  const zw = await attempt('Ali\u200Bce');
  assert(zw.prejoin && /invisible/i.test(zw.error) && zw.signaling === 'idle', `a zero-width space refused: ${JSON.stringify(zw)}`);
  await t.screenshot(f, 'join-name-refused.png');
  const ok = await attempt('Alice Form');
  assert(!ok.prejoin && !ok.error, `a good name joins: ${JSON.stringify(ok)}`);
  await f.joined();
  await f.context.close();
  // A name the server refuses anyway (invalid_name): the error offers to change it, and the
  // join screen comes back.
  const r = await t.open('Refused', { initScript: refusedNameOnce });
  await r.waitFor(() => document.body.dataset.signaling === 'failed', null, 'the invalid_name refusal');
  const failed = await r.eval(() => ({ banner: document.getElementById('banner-text').textContent, action: document.getElementById('banner-action').hidden ? '' : document.getElementById('banner-action').textContent }));
  assert(/name/i.test(failed.banner) && failed.action === 'Change name', `the refusal offers a new name: ${JSON.stringify(failed)}`);
  await Promise.all([r.page.waitForNavigation(), r.page.click('#banner-action')]);
  await r.waitFor(() => !document.getElementById('prejoin').hidden, null, 'the join screen again');
  await r.page.fill('#prejoin-name', 'Renamed');
  await r.page.click('#prejoin-join');
  await r.joined();
  assert(await r.eval(() => window.__demo.client.options.name) === 'Renamed', 'joined under the new name');
});

test('demo: two peers in a call with chat and canvas (screenshots)', async (t) => {
  const a = await t.open('Ada Lovelace');
  await a.joined();
  const b = await t.open('Grace Hopper', { viewport: { width: 390, height: 844 } });
  await Promise.all([a.connected(1), b.connected(1)]);
  await a.sayTo(b, 'Hi Grace! Can you see the canvas?');
  await b.sayTo(a, 'Yes, drawing a wave for you');
  const wave = Array.from({ length: 60 }, (_, i) => [0.08 + i * 0.014, 0.55 + 0.18 * Math.sin(i / 6)]);
  const spiral = Array.from({ length: 90 }, (_, i) => [0.72 + 0.0022 * i * Math.cos(i / 7), 0.4 + 0.004 * i * Math.sin(i / 7)]);
  const w = await b.eval((pts) => window.__demo.drawStroke(pts, '#06d6a0'), wave);
  const s = await a.eval((pts) => window.__demo.drawStroke(pts, '#ffd166'), spiral);
  await a.waitFor((id) => window.__demo.canvas.strokes.has(id), w, 'the wave at Ada');
  await b.waitFor((id) => window.__demo.canvas.strokes.has(id), s, 'the spiral at Grace');
  // Grace's cursor hovering on Ada's board.
  const box = await b.page.locator('#board').boundingBox();
  await b.page.mouse.move(box.x + box.width * 0.45, box.y + box.height * 0.3);
  await b.page.mouse.move(box.x + box.width * 0.5, box.y + box.height * 0.32);
  await a.waitFor(() => document.querySelector('#cursors .cursor:not([data-hidden])'), null, 'Grace\'s cursor at Ada');
  await b.waitFor(() => document.querySelector('.tile-remote video')?.videoWidth > 0, null, 'video at Grace');
  await a.waitFor(() => document.querySelector('.tile-remote video')?.videoWidth > 0, null, 'video at Ada');
  await a.waitFor(() => document.querySelector('.conn .c-rtt')?.textContent.endsWith('ms'), null, 'RTT in the connection panel');
  await waitUntil(async () => (Object.values(await a.stats())[0]?.bytesReceived || 0) > 100000, WAIT, 'media bytes flowing');
  await a.waitFor(() => / (KB|MB)$/.test(document.querySelector('.conn .c-bytes')?.textContent || ''), null, 'byte counters in the panel');
  await t.screenshot(a, 'demo-two-peers.png');
  await t.screenshot(b, 'demo-phone.png');
  // The join screen a third user meets with the invite link (no ?name=): preview and devices.
  const j = await t.open('Joiner', { url: `${t.shared.signaling.http}/r/${t.room}` });
  await j.waitFor(() => document.getElementById('preview-video').videoWidth > 0, null, 'the camera preview');
  await j.page.fill('#prejoin-name', 'Katherine Johnson');
  await t.screenshot(j, 'demo-join.png');
});

// --- runner ---

async function main() {
  const filters = [...process.argv.slice(2), ...(process.env.BROWSER_TESTS || '').split(',')].map((s) => s.trim()).filter(Boolean);
  const selected = filters.length ? tests.filter((x) => filters.some((f) => x.name.includes(f))) : tests;
  let passed = 0;
  let failed = 0;
  let browser = null;
  const shared = {};
  const started = Date.now();
  try {
    shared.signaling = await startSignaling([], 'signaling');
    browser = await launchBrowser();
    console.log(`browser tests: ${selected.length} test(s), signaling on ${shared.signaling.addr}, Chromium ${browser.version()}`);
  } catch (err) {
    console.log(`FAIL setup: ${err.message}`);
    if (shared.signaling) console.log(shared.signaling.proc.tail());
    failed = selected.length || 1;
    console.log(`0 passed, ${failed} failed`);
    process.exit(1);
  }
  for (const { name, fn } of selected) {
    const t = new TestContext(name.split(':')[0], browser, shared);
    const t0 = Date.now();
    let error = null;
    try {
      const run = fn(t);
      run.catch(() => {}); // after a timeout the test's own rejection must not crash the runner
      await withTimeout(run, TEST_TIMEOUT_MS, name);
      for (const p of t.pages) if (p.pageErrors.length) throw new Error(`${p.name}: uncaught page errors: ${p.pageErrors.join(' | ')}`);
    } catch (err) {
      error = err;
    }
    const secs = ((Date.now() - t0) / 1000).toFixed(1);
    if (error) {
      failed += 1;
      await t.close(true);
      console.log(`FAIL ${name} (${secs} s)\n  ${String(error.message).replace(/\x1b\[[0-9;]*m/g, '')}\n${t.report()}`);
      if (shared.signaling.proc.exited) console.log(`  --- shared signaling EXITED\n${shared.signaling.proc.tail(20)}`);
    } else {
      passed += 1;
      console.log(`ok   ${name} (${secs} s)`);
      await t.close(false);
    }
  }
  await browser.close().catch(() => {});
  await shared.signaling.proc.stop().catch(() => {});
  console.log(`screenshots in ${path.relative(process.cwd(), ARTIFACTS) || ARTIFACTS}; total ${((Date.now() - started) / 1000).toFixed(1)} s`);
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

process.on('unhandledRejection', (err) => {
  // A late failure of a test that already timed out (its page was closed under it).
  console.log(`  (ignored late error: ${String(err?.message || err).split('\n')[0]})`);
});

main().catch((err) => {
  console.log(`FAIL runner: ${err.stack || err}`);
  console.log('0 passed, 1 failed');
  process.exit(1);
});
