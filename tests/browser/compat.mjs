// Browser tests of the compatibility endpoints with the real client libraries from npm: Yjs +
// y-webrtc (bundled for the page with esbuild) against our server's /y-webrtc, in headless
// Chromium. Each page has its own browser context, so y-webrtc cannot shortcut through a
// BroadcastChannel: every update crosses our signaling server and a WebRTC data channel.
//
//   node compat.mjs [filter...]
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { build } from 'esbuild';
import { REPO_ROOT, launchBrowser, startSignaling, waitUntil } from './harness.mjs';

const TEST_TIMEOUT_MS = 60000;

/** A copy of web-demo with the Yjs notes example bundled, for `signaling --web-dir`. */
async function webDirWithNotes() {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'web-demo-'));
  cpSync(path.join(REPO_ROOT, 'web-demo'), dir, { recursive: true });
  await build({
    entryPoints: [path.join(dir, 'examples', 'yjs-notes.js')],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    define: { global: 'globalThis' },
    // The libraries come from this test directory's node_modules.
    nodePaths: [path.join(REPO_ROOT, 'tests', 'browser', 'node_modules')],
    outfile: path.join(dir, 'examples', 'yjs-notes.bundle.js'),
    logLevel: 'warning',
  });
  return dir;
}

/** A page of the notes example in its own context, with its errors collected. */
async function openNotes(browser, base, room, extra = '') {
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`${base}/examples/yjs-notes.html?room=${encodeURIComponent(room)}${extra}`);
  await page.waitForFunction(() => window.notes !== undefined, null, { timeout: 15000 });
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
        fn({ browser, base, relayed }),
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
