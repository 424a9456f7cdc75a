// bench-y-webrtc-room.mjs: does a whole room of real y-webrtc peers joining at once stay inside
// the server's per-connection message rate (`--rate-limit`, `--rate-burst`; a `publish` takes
// one token per started 4 KiB of its data)?
//
//   node tests/browser/bench-y-webrtc-room.mjs [peers=20] [password]
//
// `peers` pages of the Yjs notes example (each in its own browser context, so every signal
// crosses the server) open one room within a second, with the server's default message rate,
// until every page has a WebRTC connection to every other one (y-webrtc caps a page at 20 to 34
// connections). Then one page types and every page must see it. Each page counts what its
// y-webrtc socket sends. Printed: the time to the full mesh, the publishes and their tokens
// per connection, the smallest burst that would have let the busiest connection through at the
// default rate (to set beside the default `--rate-burst`), and the connections the server closed
// for the rate. The per-address limits are raised: here every page shares 127.0.0.1. Same
// binaries and env vars as run.mjs.

import { rmSync } from 'node:fs';
import { launchBrowser, startSignaling, waitUntil } from './harness.mjs';
import { openNotes, webDirWithNotes } from './yjs-notes-pages.mjs';

const count = Number(process.argv[2]) || 20;
const password = process.argv[3];
const RATE = 50; // --rate-limit's default
const BURST = 200; // --rate-burst's default
const TOKEN_BYTES = 4096; // a publish's cost: one token per started 4 KiB of its JSON data

/** Runs in each page first: counts what y-webrtc's signaling socket sends, and its closes. */
function countSignaling() {
  window.signalingSent = [];
  window.signalingCloses = [];
  window.signalingReceived = 0;
  window.signalingSockets = [];
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      window.signalingSockets.push(this);
      this.addEventListener('close', (e) => window.signalingCloses.push(e.code));
      this.addEventListener('message', () => { window.signalingReceived += 1; });
    }

    send(frame) {
      if (typeof frame === 'string') {
        try {
          const m = JSON.parse(frame);
          const bytes = m.type === 'publish' ? JSON.stringify(m.data).length : 0;
          window.signalingSent.push({ t: performance.timeOrigin + performance.now(), type: m.type, bytes });
        } catch { /* not ours to judge */ }
      }
      super.send(frame);
    }
  };
}

/**
 * The smallest token bucket that admits `events` ({t ms, cost}) at `rate` tokens/s: the most,
 * over any span of them, that their cost exceeds what the rate refills in that span.
 */
function burstNeeded(events, rate) {
  let worst = 0;
  for (let i = 0; i < events.length; i += 1) {
    let cost = 0;
    for (let j = i; j >= 0; j -= 1) {
      cost += events[j].cost;
      worst = Math.max(worst, cost - ((events[i].t - events[j].t) / 1000) * rate);
    }
  }
  return worst;
}

const dir = await webDirWithNotes();
const sig = await startSignaling([
  '--web-dir', dir,
  '--max-connections-per-ip', '10000', '--max-sessions-per-ip', '10000',
  '--join-rate-per-ip', '10000', '--join-burst-per-ip', '10000',
], 'signaling-y-room');
const browser = await launchBrowser();
const metric = async (re) => {
  const m = re.exec(await (await fetch(`${sig.http}/metrics`)).text());
  return m ? Number(m[1]) : 0;
};
const ended = (code) => new RegExp(`^signaling_errors_total\\{code="${code}"\\} (\\d+)`, 'm');
let failed = false;
try {
  const room = `room-${Date.now()}`;
  const extra = password ? `&password=${encodeURIComponent(password)}` : '';
  const t0 = Date.now();
  const pages = await Promise.all(
    Array.from({ length: count }, () => openNotes(browser, sig.http, room, extra, countSignaling, 90000)),
  );
  const opened = Date.now() - t0;
  const connected = (p) => p.page.evaluate(() => [...(window.notes.provider.room?.webrtcConns.values() ?? [])]
    .filter((c) => c.connected).length);
  // y-webrtc connects a page to at most 20 + rand(0..15) others.
  const want = Math.min(count - 1, 20);
  let meshed = 'never (in 120 s)';
  try {
    await waitUntil(async () => (await Promise.all(pages.map(connected))).every((n) => n >= want),
      120000, `every page connected to ${want} others`, 500);
    meshed = `${Date.now() - t0} ms after the first page opened`;
    await pages[0].page.fill('#notes', 'typed by the first page');
    await waitUntil(async () => (await Promise.all(pages.map((p) => p.page.evaluate(() => window.notes.text.toString()))))
      .every((t) => t === 'typed by the first page'), 30000, 'every page has the text', 250);
  } catch (err) {
    failed = true;
    console.log(`FAIL ${err.message.split('\n')[0]}; connections per page: ${JSON.stringify(await Promise.all(pages.map(connected)))}`);
    console.log(`  frames received per page: ${JSON.stringify(await Promise.all(pages.map((p) => p.page.evaluate(() => window.signalingReceived))))}`);
    console.log(`  socket states per page: ${JSON.stringify(await Promise.all(pages.map((p) => p.page.evaluate(() => window.signalingSockets.map((w) => w.readyState)))))}`);
  }

  const sent = await Promise.all(pages.map((p) => p.page.evaluate(() => window.signalingSent)));
  const closes = (await Promise.all(pages.map((p) => p.page.evaluate(() => window.signalingCloses)))).flat();
  const publishes = sent.map((s) => s.filter((e) => e.type === 'publish'));
  const costs = publishes.map((s) => s.map((e) => ({ t: e.t, cost: Math.max(1, Math.ceil(e.bytes / TOKEN_BYTES)) })));
  const tokens = costs.map((c) => c.reduce((a, e) => a + e.cost, 0));
  const biggest = Math.max(...publishes.flat().map((e) => e.bytes));
  const needed = costs.map((c) => burstNeeded(c, RATE));
  const rateLimited = await metric(ended('rate_limited'));
  const slowConsumers = await metric(ended('slow_consumer'));
  const fmt = (xs) => `median ${[...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]}, max ${Math.max(...xs)}`;
  console.log(`y-webrtc room of ${count} pages${password ? ' (password: signals encrypted)' : ''}, server defaults --rate-limit ${RATE} --rate-burst ${BURST}`);
  console.log(`  pages open (all at once)          ${opened} ms`);
  console.log(`  every page connected to ${want}      ${meshed}`);
  console.log(`  publishes per connection          ${fmt(publishes.map((s) => s.length))}`);
  console.log(`  tokens per connection             ${fmt(tokens)} (largest publish: ${biggest} bytes of data)`);
  console.log(`  burst needed at ${RATE}/s             ${fmt(needed.map((n) => Math.ceil(n)))} (default burst ${BURST})`);
  console.log(`  closed for the rate               ${rateLimited}; ended as slow consumers: ${slowConsumers} (server)`);
  console.log(`  close codes seen by pages         ${JSON.stringify(closes)}`);
  const pageErrors = pages.flatMap((p) => p.errors);
  if (pageErrors.length) console.log(`  page errors: ${pageErrors.slice(0, 5).join(' | ')}`);
  failed ||= rateLimited > 0 || slowConsumers > 0 || closes.length > 0;
  if (failed) console.log(sig.proc.lines.filter((l) => !/joined the room|left the room/.test(l)).slice(-40).join('\n'));
  await Promise.all(pages.map((p) => p.context.close()));
} catch (err) {
  failed = true;
  console.log(`FAIL ${err.stack || err}\n${sig.proc.tail(20)}`);
} finally {
  await browser.close().catch(() => {});
  await sig.proc.stop().catch(() => {});
  rmSync(dir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
