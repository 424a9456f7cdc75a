// Browser tests of the compatibility endpoints with the real client libraries from npm, bundled
// for the page with esbuild, in headless Chromium: Yjs + y-webrtc against /y-webrtc, and PeerJS
// against /peerjs. Each page has its own browser context, so y-webrtc cannot shortcut through a
// BroadcastChannel: every update crosses our signaling server and a WebRTC data channel.
//
//   node compat.mjs [filter...]
import { createHmac } from 'node:crypto';
import { rmSync } from 'node:fs';
import WebSocket from 'ws';
import { Proc, freePort, launchBrowser, requireBin, startSignaling, waitUntil } from './harness.mjs';
import { openNotes, webDirWithNotes } from './yjs-notes-pages.mjs';

const TEST_TIMEOUT_MS = 60000;

/** A PeerJS `Peer` with id `id` in a page of its own context, connected to our server. */
async function openPeer(browser, base, id) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`${base}/peerjs-test.html`);
  await page.waitForFunction(() => window.Peer !== undefined, null, { timeout: 15000 });
  const port = Number(new URL(base).port);
  await page.evaluate(({ id, port }) => new Promise((resolve, reject) => {
    window.got = [];
    window.opens = 0;
    const peer = new window.Peer(id, { host: '127.0.0.1', port, path: '/peerjs', key: 'peerjs', debug: 0 });
    window.peer = peer;
    peer.on('connection', (c) => c.on('data', (d) => window.got.push(d)));
    peer.on('open', () => { window.opens += 1; resolve(); });
    peer.on('error', (e) => reject(new Error(`${e.type}: ${e.message}`)));
  }), { id, port });
  return { page, context, errors };
}

const text = (p) => p.page.evaluate(() => window.notes.text.toString());
const peers = (p) => p.page.evaluate(() => window.notes.peers());

async function type(p, value) {
  await p.page.fill('#notes', value);
}

async function converge(pages, want, what) {
  await waitUntil(async () => {
    const texts = await Promise.all(pages.map(text));
    return texts.every((t) => t === want);
  }, 20000, what);
}

/** An HS256 JWT of `claims` signed with `secret`. */
function jwt(claims, secret) {
  const part = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const body = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

const tests = [
  {
    name: 'y-webrtc: two pages edit one Y.Text through /y-webrtc, and a late third page gets the whole document',
    async fn({ browser, base, relayed }) {
      const room = `notes-${Date.now()}`;
      const a = await openNotes(browser, base, room);
      const b = await openNotes(browser, base, room);
      await waitUntil(async () => (await peers(a)) >= 1 && (await peers(b)) >= 1, 20000, 'A and B connected over WebRTC');
      await type(a, 'hello from A');
      await converge([a, b], 'hello from A', 'B sees what A typed');
      await type(b, 'hello from A, and from B');
      await converge([a, b], 'hello from A, and from B', 'A sees what B typed');
      const c = await openNotes(browser, base, room);
      await converge([a, b, c], 'hello from A, and from B', 'late C gets the whole document');
      const relayedNow = await relayed();
      if (relayedNow < 4) throw new Error(`only ${relayedNow} signaling messages crossed the server`);
      for (const p of [a, b, c]) {
        if (p.errors.length) throw new Error(`page errors: ${p.errors.join(' | ')}`);
        await p.context.close();
      }
    },
  },
  {
    name: 'y-webrtc: with a room password (signaling encrypted end to end) the pages still converge; a wrong password does not join',
    async fn({ browser, base }) {
      const room = `secret-${Date.now()}`;
      const a = await openNotes(browser, base, room, '&password=correct%20horse');
      const b = await openNotes(browser, base, room, '&password=correct%20horse');
      const eve = await openNotes(browser, base, room, '&password=wrong');
      await type(a, 'for password holders');
      await converge([a, b], 'for password holders', 'B decrypts and syncs');
      await new Promise((r) => setTimeout(r, 1500));
      if ((await text(eve)) !== '') throw new Error('a page with the wrong password got the text');
      for (const p of [a, b, eve]) await p.context.close();
    },
  },
  {
    name: 'y-webrtc: relay-only through our TURN relay, with a room token for the topic and the credentials',
    async fn({ browser, webDir }) {
      const turnSecret = 'compat-turn-secret';
      const jwtSecret = 'compat-jwt-secret';
      const port = await freePort();
      const relay = new Proc('relay-compat', requireBin('RELAY_BIN', 'relay'), [
        '--listen', `127.0.0.1:${port}`, '--no-tcp', '--admin-listen', 'none', '--relay-ip', '127.0.0.1',
        '--allow-loopback-peers', '--turn-secret', turnSecret,
      ]);
      await relay.waitForLine(/^ready$/, 20000, 'relay ready');
      const sig = await startSignaling([
        '--web-dir', webDir, '--jwt-secret', jwtSecret,
        '--turn-url', `turn:127.0.0.1:${port}?transport=udp`, '--turn-secret', turnSecret,
      ], 'signaling-compat-turn');
      try {
        const room = `relayed-${Date.now()}`;
        const token = jwt({ room, exp: Math.floor(Date.now() / 1000) + 300 }, jwtSecret);
        const extra = `&relay=1&token=${token}`;
        const a = await openNotes(browser, sig.http, room, extra);
        const b = await openNotes(browser, sig.http, room, extra);
        await type(a, 'through the relay');
        await converge([a, b], 'through the relay', 'B syncs through TURN');
        // The stats of a pair that carries data can lag behind it on a loaded machine: ask for
        // up to 5 s until a nominated pair is reported, then every one must be relayed.
        let types = [];
        for (let i = 0; i < 25 && !types.length; i += 1) {
          if (i > 0) await new Promise((r) => setTimeout(r, 200));
          types = await a.page.evaluate(() => window.notes.pairTypes());
        }
        if (!types.length || !types.every((x) => x === 'relay')) throw new Error(`selected pairs: ${JSON.stringify(types)}`);
        // Without a token the topic stays closed.
        const c = await openNotes(browser, sig.http, room, '');
        await new Promise((r) => setTimeout(r, 1000));
        if ((await text(c)) !== '') throw new Error('a page without a token joined the topic');
        for (const p of [a, b, c]) await p.context.close();
      } finally {
        await sig.proc.stop().catch(() => {});
        await relay.stop().catch(() => {});
      }
    },
  },
  {
    name: 'peerjs: two pages connect by id, 1,000 messages arrive in order, and a reconnect after a dropped signaling socket gets what was sent meanwhile',
    async fn({ browser, base }) {
      const suffix = Date.now();
      const a = await openPeer(browser, base, `alice-${suffix}`);
      const b = await openPeer(browser, base, `bob-${suffix}`);
      await b.page.evaluate((dst) => new Promise((resolve, reject) => {
        const conn = window.peer.connect(dst, { reliable: true });
        conn.on('open', () => {
          for (let n = 0; n < 1000; n += 1) conn.send(n);
          resolve();
        });
        conn.on('error', reject);
      }), `alice-${suffix}`);
      await waitUntil(async () => (await a.page.evaluate(() => window.got.length)) >= 1000, 20000, 'A got 1,000 messages');
      const got = await a.page.evaluate(() => window.got.slice(0, 1000));
      if (!got.every((v, i) => v === i)) throw new Error('messages out of order or changed');
      // A's signaling socket drops; B opens a second connection meanwhile: its offer waits on
      // the server until A reconnects (peer.reconnect(): the same id and token).
      await a.page.evaluate(() => new Promise((resolve) => {
        window.peer.once('disconnected', resolve);
        window.peer.socket._socket.close();
      }));
      await b.page.evaluate((dst) => {
        const conn = window.peer.connect(dst, { reliable: true, label: 'second' });
        conn.on('open', () => conn.send('after the reconnect'));
      }, `alice-${suffix}`);
      // Longer than peerjs-server's 5 s message expiry: here it waits for the grace period.
      await new Promise((r) => setTimeout(r, 6000));
      await a.page.evaluate(() => window.peer.reconnect());
      await waitUntil(async () => (await a.page.evaluate(() => window.got.includes('after the reconnect'))), 20000, 'A got the message of the connection offered while it was away');
      for (const p of [a, b]) {
        if (p.errors.length) throw new Error(`page errors: ${p.errors.join(' | ')}`);
        await p.context.close();
      }
    },
  },
  {
    // No page: a client of the wire protocols (Node's `ws`, as the libraries' own tests use).
    name: 'a client flooding past the message rate gets its error and the 1008 close, not a reset (y-webrtc, PeerJS)',
    async fn({ base }) {
      const W = base.replace(/^http/, 'ws');
      const suffix = Date.now();
      const open = (url) => new Promise((resolve, reject) => {
        const ws = new WebSocket(url);
        const c = { ws, msgs: [], closed: null };
        ws.on('message', (data) => c.msgs.push(String(data)));
        ws.on('close', (code) => { c.closed = code; });
        ws.on('error', () => {});
        ws.on('unexpected-response', (_, res) => reject(new Error(`${url}: HTTP ${res.statusCode}`)));
        ws.on('open', () => resolve(c));
      });
      // Over the default rate (50/s, burst 200) by far, sent without waiting.
      const flood = async (c, frame) => {
        for (let i = 0; i < 1000; i++) c.ws.send(JSON.stringify(frame(i)));
        await waitUntil(() => c.closed !== null, 10000, 'the close');
      };
      const y = await open(`${W}/y-webrtc`);
      const topic = `flood-${suffix}`;
      y.ws.send(JSON.stringify({ type: 'subscribe', topics: [topic] }));
      await flood(y, (i) => ({ type: 'publish', topic, data: i }));
      if (y.closed !== 1008) throw new Error(`y-webrtc: closed with ${y.closed}, not 1008`);
      const p = await open(`${W}/peerjs/peerjs?key=flood&id=f${suffix}&token=t${suffix}`);
      await waitUntil(() => p.msgs.some((m) => m.includes('"OPEN"')), 5000, 'OPEN');
      await flood(p, (i) => ({ type: 'CANDIDATE', dst: `nobody-${suffix}`, payload: { i } }));
      if (p.closed !== 1008) throw new Error(`PeerJS: closed with ${p.closed}, not 1008`);
      if (!p.msgs.some((m) => m.includes('"ERROR"'))) throw new Error('PeerJS: no ERROR before the close');
    },
  },
];

async function main() {
  const filters = process.argv.slice(2);
  const selected = filters.length ? tests.filter((t) => filters.some((f) => t.name.includes(f))) : tests;
  const dir = await webDirWithNotes();
  const sig = await startSignaling(['--web-dir', dir], 'signaling-compat');
  const browser = await launchBrowser();
  const base = sig.http;
  const relayed = async () => {
    const res = await fetch(`${base}/metrics`);
    const m = /^signaling_messages_relayed_total (\d+)/m.exec(await res.text());
    return m ? Number(m[1]) : 0;
  };
  let passed = 0;
  let failed = 0;
  for (const { name, fn } of selected) {
    const t0 = Date.now();
    try {
      await Promise.race([
        fn({ browser, base, relayed, webDir: dir }),
        new Promise((_, reject) => setTimeout(() => reject(new Error('timed out')), TEST_TIMEOUT_MS)),
      ]);
      passed += 1;
      console.log(`ok   ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    } catch (err) {
      failed += 1;
      console.log(`FAIL ${name}\n  ${err.message}\n${sig.proc.tail(20)}`);
    }
  }
  await browser.close().catch(() => {});
  await sig.proc.stop().catch(() => {});
  rmSync(dir, { recursive: true, force: true });
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

main().catch((err) => {
  console.log(`FAIL runner: ${err.stack || err}`);
  process.exit(1);
});
