// harness.mjs: processes, Chromium, bounded waits and a STUN readiness probe for the browser tests.
//
// Every child process is killed by PID when the runner exits, whatever the reason; every wait
// has a deadline. Nothing here sleeps for a fixed time where a condition can be awaited.

import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { createSocket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const ARTIFACTS = process.env.ARTIFACTS_DIR || path.join(REPO_ROOT, 'tests', 'artifacts');
mkdirSync(ARTIFACTS, { recursive: true });

/** A binary of the workspace: from env var `envName`, else $CARGO_TARGET_DIR (or target)/debug/<name>. */
export function binPath(envName, name) {
  const targetDir = process.env.CARGO_TARGET_DIR || path.join(REPO_ROOT, 'target');
  const p = process.env[envName] || path.join(targetDir, 'debug', name);
  return path.isAbsolute(p) ? p : path.join(REPO_ROOT, p);
}

export function requireBin(envName, name) {
  const p = binPath(envName, name);
  if (!existsSync(p)) {
    throw new Error(`${name} binary not found at ${p}: build it (cargo build --workspace --bins) or set ${envName}`);
  }
  return p;
}

const children = new Set();

function killAll() {
  for (const child of children) {
    try { process.kill(child.pid, 'SIGKILL'); } catch { /* already gone */ }
  }
  children.clear();
}
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => { killAll(); process.exit(130); });
}

/** A spawned child with its output kept (bounded) for failure reports. */
export class Proc {
  constructor(name, bin, args, opts = {}) {
    this.name = name;
    this.lines = [];
    this.exited = null;
    this.child = spawn(bin, args, { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1', ...opts.env }, cwd: opts.cwd || REPO_ROOT });
    children.add(this.child);
    this._waiters = new Set();
    const onData = (stream) => {
      let buf = '';
      return (chunk) => {
        buf += chunk.toString();
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          this._line(stream, line);
        }
      };
    };
    this.child.stdout.on('data', onData('out'));
    this.child.stderr.on('data', onData('err'));
    this.child.on('exit', (code, signal) => {
      this.exited = { code, signal };
      children.delete(this.child);
      for (const w of this._waiters) w.reject(new Error(`${name} exited (code ${code}, signal ${signal}) while waiting for ${w.what}\n${this.tail()}`));
      this._waiters.clear();
    });
    this.child.on('error', (err) => {
      this.exited = { error: err };
      for (const w of this._waiters) w.reject(new Error(`${name} failed to start: ${err.message}`));
      this._waiters.clear();
    });
  }

  get pid() { return this.child.pid; }

  _line(stream, raw) {
    const line = raw.replace(/\x1b\[[0-9;]*m/g, '');
    this.lines.push(`[${stream}] ${line}`);
    if (this.lines.length > 2000) this.lines.splice(0, 500);
    for (const w of [...this._waiters]) {
      const m = w.re.exec(line);
      if (m) { this._waiters.delete(w); w.resolve(m); }
    }
  }

  /** Resolves with the regex match of the first (past or future) output line matching `re`. */
  waitForLine(re, timeoutMs, what = String(re)) {
    for (const l of this.lines) {
      const m = re.exec(l.replace(/^\[(out|err)\] /, ''));
      if (m) return Promise.resolve(m);
    }
    if (this.exited) return Promise.reject(new Error(`${this.name} already exited while waiting for ${what}\n${this.tail()}`));
    return new Promise((resolve, reject) => {
      const w = { re, what, resolve, reject };
      this._waiters.add(w);
      setTimeout(() => {
        if (this._waiters.delete(w)) reject(new Error(`timeout (${timeoutMs} ms) waiting for ${this.name} to print ${what}\n${this.tail()}`));
      }, timeoutMs);
    });
  }

  send(line) { this.child.stdin.write(`${line}\n`); }

  tail(n = 30) { return this.lines.slice(-n).map((l) => `    ${this.name} ${l}`).join('\n'); }

  async stop(signal = 'SIGTERM', timeoutMs = 5000) {
    if (this.exited) return;
    const done = new Promise((res) => this.child.once('exit', res));
    try { process.kill(this.pid, signal); } catch { return; }
    const timer = setTimeout(() => { try { process.kill(this.pid, 'SIGKILL'); } catch { /* gone */ } }, timeoutMs);
    await done;
    clearTimeout(timer);
  }
}

/** Starts `signaling` (on 127.0.0.1:0 unless told) and resolves with { proc, addr, http, ws }
 * (https and wss with TLS). */
export async function startSignaling(args = [], name = 'signaling', listen = '127.0.0.1:0') {
  const bin = requireBin('SIGNALING_BIN', 'signaling');
  // Free ports where the test named none: no default port (9642, 3478, 9641) another program
  // on the machine may want. The test's own flags win.
  const extra = [];
  if (args.includes('--with-relay')) {
    if (!args.includes('--relay-listen')) extra.push('--relay-listen', '127.0.0.1:0');
    if (!args.some((a) => a.startsWith('--relay-arg=--admin-listen'))) extra.push('--relay-arg=--admin-listen=127.0.0.1:0');
  }
  const env = { RUST_LOG: process.env.RUST_LOG || 'info', SIGNALING_ADMIN_LISTEN: '127.0.0.1:0' };
  const proc = new Proc(name, bin, ['--listen', listen, ...args, ...extra], { env });
  const m = await proc.waitForLine(/listening on http(s?):\/\/(\S+)/, 20000, '"listening on http(s)://ADDR"');
  const [, s, addr] = m;
  return { proc, addr, http: `http${s}://${addr}`, ws: `ws${s}://${addr}/ws` };
}

/** A free port on 127.0.0.1 for both UDP and TCP (for servers that must be told their port). */
export async function freePort() {
  for (let i = 0; i < 20; i += 1) {
    const port = await new Promise((resolve, reject) => {
      const s = createServer();
      s.once('error', reject);
      s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
    });
    const udpFree = await new Promise((resolve) => {
      const u = createSocket('udp4');
      u.once('error', () => resolve(false));
      u.bind(port, '127.0.0.1', () => u.close(() => resolve(true)));
    });
    if (udpFree) return port;
  }
  throw new Error('no free port found');
}

/** Polls `fn` until it returns a truthy value; throws with `what` after `timeoutMs`. */
export async function waitUntil(fn, timeoutMs, what, intervalMs = 100) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timeout (${timeoutMs} ms) waiting for ${what}${last instanceof Error ? `: ${last.message}` : ''}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** A STUN Binding request to 127.0.0.1:`port`: resolves true when a STUN message (the magic
 * cookie in place) comes back within 500 ms, whatever its class (the relay is up), false
 * otherwise. */
export function stunBinding(port) {
  return new Promise((resolve) => {
    const sock = createSocket('udp4');
    const msg = Buffer.alloc(20);
    msg.writeUInt16BE(0x0001, 0);
    msg.writeUInt16BE(0, 2);
    msg.writeUInt32BE(0x2112a442, 4);
    randomBytes(12).copy(msg, 8);
    const done = (ok) => { clearTimeout(timer); try { sock.close(); } catch { /* closed */ } resolve(ok); };
    const timer = setTimeout(() => done(false), 500);
    sock.on('message', (m) => done(m.length >= 20 && m.readUInt32BE(4) === 0x2112a442));
    sock.on('error', () => done(false));
    sock.send(msg, port, '127.0.0.1');
  });
}

export const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--disable-features=WebRtcHideLocalIpsWithMdns',
  '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
  '--allow-loopback-in-peer-connection', '--autoplay-policy=no-user-gesture-required',
];

/** Launches Chromium with CHROMIUM_ARGS and `extraArgs` (e.g. a --proxy-server). */
export async function launchBrowser(extraArgs = []) {
  const executablePath = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
  if (!existsSync(executablePath)) throw new Error(`Chromium not found at ${executablePath} (apt-get install -y chromium, or set CHROMIUM_BIN)`);
  return chromium.launch({ executablePath, args: [...CHROMIUM_ARGS, ...extraArgs], timeout: 30000 });
}
