// yjs-notes-pages.mjs: the Yjs notes example (web-demo/examples/yjs-notes.js) bundled with the
// real y-webrtc and Yjs from npm, and pages of it, for compat.mjs and bench-y-webrtc-room.mjs.
import { cpSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { build } from 'esbuild';
import { REPO_ROOT } from './harness.mjs';

/** A copy of web-demo with the Yjs notes example and PeerJS bundled, for `signaling --web-dir`. */
export async function webDirWithNotes() {
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
  // PeerJS as the page gets it: a bundle that puts `Peer` on window, and an empty page.
  writeFileSync(path.join(dir, 'peerjs-entry.js'), "import { Peer } from 'peerjs'; window.Peer = Peer;\n");
  await build({
    entryPoints: [path.join(dir, 'peerjs-entry.js')],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    nodePaths: [path.join(REPO_ROOT, 'tests', 'browser', 'node_modules')],
    outfile: path.join(dir, 'peerjs.bundle.js'),
    logLevel: 'warning',
  });
  writeFileSync(
    path.join(dir, 'peerjs-test.html'),
    '<!doctype html><meta charset="utf-8"><title>PeerJS</title><script type="module" src="/peerjs.bundle.js"></script>\n',
  );
  return dir;
}

/**
 * A page of the notes example in its own browser context (so y-webrtc cannot shortcut through a
 * BroadcastChannel), with its errors collected. `initScript`, if given, runs in the page before
 * its own scripts; the page must be up within `timeoutMs`.
 */
export async function openNotes(browser, base, room, extra = '', initScript = undefined, timeoutMs = 15000) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  if (initScript) await page.addInitScript(initScript);
  await page.goto(`${base}/examples/yjs-notes.html?room=${encodeURIComponent(room)}${extra}`);
  await page.waitForFunction(() => window.notes !== undefined, null, { timeout: timeoutMs });
  return { page, context, errors };
}
