// Shared pieces of the end-to-end tests: the native `pluresdb serve` server
// on a free loopback port, and Debian's Chromium driven by playwright-core.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const root = fileURLToPath(new URL('../../', import.meta.url));

/**
 * Starts `pluresdb serve` on 127.0.0.1 with a free port (or `port`), its
 * database and relay backlog in a scratch directory (or `scratch`, to restart
 * a stopped server with its data); resolves to { url, relayUrl, port, scratch, stop }.
 */
export async function startServer(extraArgs = [], { port = 0, scratch: reuse } = {}) {
  const binary = process.env.PLURESDB_BIN ?? join(root, 'target', 'debug', 'pluresdb');
  const scratch = reuse ?? mkdtempSync(join(tmpdir(), 'pluresdb-serve-'));
  // A relay on Redis keeps no backlog file.
  const backlog = extraArgs.includes('--redis') ? [] : ['--relay-backlog', join(scratch, 'relay.db')];
  const child = spawn(binary, [
    '--db', join(scratch, 'server.db'), 'serve', '--port', String(port),
    ...backlog, ...extraArgs,
  ], {
    cwd: root,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (chunk) => { stderr += chunk; });
  const url = await new Promise((resolve, reject) => {
    let stdout = '';
    const timer = setTimeout(() => reject(new Error(`server did not start: ${stderr}`)), 20_000);
    child.stdout.on('data', (chunk) => {
      stdout += chunk;
      const match = stdout.match(/serving on (http:\/\/\S+)/);
      if (match) {
        clearTimeout(timer);
        resolve(match[1].replace(/\/$/, ''));
      }
    });
    child.on('exit', (code) => reject(new Error(`server exited with ${code}: ${stderr}`)));
  });
  return {
    url,
    relayUrl: `${url.replace(/^http/, 'ws')}/relay`,
    port: Number(new URL(url).port),
    scratch,
    child,
    /** Stops the server; `keepData` keeps its scratch directory for a restart. */
    async stop({ keepData = false } = {}) {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await new Promise((resolve) => child.once('exit', resolve));
      }
      if (!keepData) rmSync(scratch, { recursive: true, force: true });
    },
  };
}

/** A free TCP port on 127.0.0.1. */
async function freePort() {
  const { createServer } = await import('node:net');
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/**
 * Starts Debian's `redis-server` on a free loopback port with its data in a
 * scratch directory (append-only file, fsync always); no system service.
 * Resolves to { url, stop }.
 */
export async function startRedis() {
  const scratch = mkdtempSync(join(tmpdir(), 'pluresdb-redis-'));
  const port = await freePort();
  const child = spawn('redis-server', [
    '--port', String(port), '--bind', '127.0.0.1', '--dir', scratch, '--save', '',
    '--appendonly', 'yes', '--appendfsync', 'always', '--loglevel', 'warning',
  ], { stdio: ['ignore', 'pipe', 'inherit'] });
  const spawned = new Promise((resolve, reject) => {
    child.once('spawn', resolve);
    child.once('error', (e) => reject(new Error(`redis-server is not installed (scripts/setup installs it): ${e.message}`)));
  });
  await spawned;
  const { connect } = await import('node:net');
  const deadline = Date.now() + 20_000;
  for (;;) {
    const ready = await new Promise((resolve) => {
      const socket = connect(port, '127.0.0.1');
      socket.once('connect', () => socket.write('PING\r\n'));
      socket.once('data', (data) => { socket.destroy(); resolve(String(data).startsWith('+PONG')); });
      socket.once('error', () => resolve(false));
    });
    if (ready) break;
    if (Date.now() > deadline) throw new Error('redis-server did not start');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return {
    url: `redis://127.0.0.1:${port}/`,
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGKILL');
        await new Promise((resolve) => child.once('exit', resolve));
      }
      rmSync(scratch, { recursive: true, force: true });
    },
  };
}

/** Starts `pluresdb relay` with `args`; resolves to { relayUrl, stop }. */
export async function startRelay(args = []) {
  const binary = process.env.PLURESDB_BIN ?? join(root, 'target', 'debug', 'pluresdb');
  const child = spawn(binary, ['relay', '--port', '0', ...args], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (chunk) => { stderr += chunk; });
  const relayUrl = await new Promise((resolve, reject) => {
    let stdout = '';
    const timer = setTimeout(() => reject(new Error(`relay did not start: ${stderr}`)), 20_000);
    child.stdout.on('data', (chunk) => {
      stdout += chunk;
      const match = stdout.match(/listening on (ws:\/\/\S+)/);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    });
    child.on('exit', (code) => reject(new Error(`relay exited with ${code}: ${stderr}`)));
  });
  return {
    relayUrl,
    child,
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await new Promise((resolve) => child.once('exit', resolve));
      }
    },
  };
}

/** Debian's Chromium (or $CHROMIUM). */
export function chromiumPath() {
  return process.env.CHROMIUM ?? '/usr/bin/chromium';
}

/** The flags Chromium needs here (root, no network, no GPU). */
export function chromiumArgs() {
  return [
    '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--no-first-run',
  ];
}

/** Launches headless Chromium with a fresh profile; resolves to { browser, context, close }. */
export async function launchBrowser({ userDataDir } = {}) {
  const profile = userDataDir ?? mkdtempSync(join(tmpdir(), 'pluresdb-e2e-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumPath(),
    headless: true,
    args: chromiumArgs(),
  });
  return {
    context,
    profile,
    async close({ keepProfile = false } = {}) {
      await context.close();
      if (!keepProfile && !userDataDir) rmSync(profile, { recursive: true, force: true });
    },
  };
}

/**
 * Opens `url` in a new page of `context` and waits until the page marks
 * itself ready (`body[data-ready="true"]`). Uncaught page errors are logged
 * and collected in `page.errors` for the tests to assert on.
 */
export async function openPage(context, url, { viewport } = {}) {
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (error) => {
    console.error('page error:', error);
    page.errors.push(error);
  });
  if (viewport) await page.setViewportSize(viewport);
  await page.goto(url);
  await page.waitForSelector('body[data-ready="true"]', { state: 'attached' });
  return page;
}
