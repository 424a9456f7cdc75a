// bench-setup.mjs: how long a browser that joins a room takes to reach the peer already there.
//
//   node tests/browser/bench-setup.mjs [runs=20]
//
// For each run a fresh pair of browser contexts joins a new room: Alice first, then Bob. Measured
// on Bob's page (performance.now clock): from the signaling `welcome` to ICE connected, and to
// the `chat` data channel open. Once with all candidates (loopback host pairs), once relay-only
// through our relay. Prints median and p95 per mode. Same binaries and env vars as run.mjs.

import { randomBytes } from 'node:crypto';
import {
  Proc, freePort, launchBrowser, requireBin, startSignaling, stunBinding, waitUntil,
} from './harness.mjs';

const runs = Number(process.argv[2]) || 20;

const secret = randomBytes(16).toString('hex');
const port = await freePort();
const relay = new Proc('relay', requireBin('RELAY_BIN', 'relay'), [
  '--listen', `127.0.0.1:${port}`, '--relay-ip', '127.0.0.1', '--turn-secret', secret,
  '--allow-loopback-peers', '--admin-listen', 'none',
]);
await waitUntil(() => stunBinding(port), 15000, 'relay up', 200);
const sig = await startSignaling(['--turn-url', `turn:127.0.0.1:${port}?transport=udp`, '--turn-secret', secret]);
const browser = await launchBrowser();

const pct = (xs, p) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]; };

for (const [mode, query] of [['direct (all candidates)', ''], ['relay-only (our TURN relay)', '&relay=1']]) {
  const connected = [];
  const channel = [];
  for (let i = 0; i < runs; i += 1) {
    const room = `bench-${randomBytes(4).toString('hex')}`;
    const contexts = [];
    const open = async (name) => {
      const ctx = await browser.newContext();
      contexts.push(ctx);
      const page = await ctx.newPage();
      await page.goto(`${sig.http}/r/${room}?name=${name}${query}`);
      await page.waitForFunction(() => document.body.dataset.signaling === 'joined', null, { timeout: 15000 });
      return page;
    };
    await open('Alice');
    const bob = await open('Bob');
    await bob.waitForFunction(() => window.__demo.events.some((e) => e.type === 'channel-open' && e.label === 'chat'), null, { timeout: 30000, polling: 20 });
    const t = await bob.evaluate(() => {
      const ev = window.__demo.events;
      const at = (f) => ev.find(f)?.t;
      const joined = at((e) => e.type === 'signaling' && e.state === 'joined');
      return {
        connected: at((e) => e.type === 'peer-state' && e.state === 'connected') - joined,
        channel: at((e) => e.type === 'channel-open' && e.label === 'chat') - joined,
      };
    });
    connected.push(t.connected);
    channel.push(t.channel);
    for (const ctx of contexts) await ctx.close();
  }
  console.log(`${mode}: ${runs} runs; welcome -> ICE connected median ${pct(connected, 50).toFixed(0)} ms, p95 ${pct(connected, 95).toFixed(0)} ms; welcome -> chat channel open median ${pct(channel, 50).toFixed(0)} ms, p95 ${pct(channel, 95).toFixed(0)} ms`);
}
await browser.close();
await sig.proc.stop();
await relay.stop();
process.exit(0);
