// The end-to-end harness: a public-looking https test site served by the real
// peercache-server from a network namespace on a documentation address, real
// headless peers, and the real native host registered for a real browser.
//
// Needs root (network namespaces), openssl, and the workspace binaries built
// (`cargo build --bins`). Everything it creates is removed by `stop()`.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, mkdirSync, readFileSync, createWriteStream, rmSync, existsSync, readdirSync, statSync } from 'node:fs';
import { randomBytes, createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import https from 'node:https';
import http from 'node:http';
import { chromium } from 'playwright-core';
import puppeteer from 'puppeteer-core';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const BIN = process.env.PEERCACHE_BIN_DIR ?? join(ROOT, 'target/debug');
export const SITE_IP = '198.51.100.2';
export const HOST_IP = '198.51.100.1';
export const SITE = `https://${SITE_IP}`;
/** A second site, served by peercache-server --upstream in front of tests/e2e/origin.mjs. */
export const COOKIE_SITE_IP = '198.51.100.3';
export const COOKIE_SITE = `https://${COOKIE_SITE_IP}`;
/** The servers' operator listeners (`/admin`, `/metrics`): never on the site's own port. */
export const SITE_ADMIN = `http://${SITE_IP}:9090`;
export const COOKIE_SITE_ADMIN = `http://${COOKIE_SITE_IP}:9090`;
export const CHROMIUM_ID = 'fmfjkafobffmfmdigggcgcdafihpelgn';
export const GECKO_ID = 'peercache@peercache.org';
export const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/lib/chromium/chromium';
export const FIREFOX = process.env.FIREFOX_BIN ?? '/usr/bin/firefox-esr';
export const EXT_CHROMIUM = join(ROOT, 'dist/chromium');
export const EXT_FIREFOX = join(ROOT, 'dist/firefox');

/**
 * Headless Chromium on the profile `userDataDir` with the built extension loaded
 * (Playwright persistent context). `env` reaches the native host it starts.
 */
/** Each host cache gets its own state directory (its peer key) beside it. */
function withState(env = {}) {
  if (env.PEERCACHE_CACHE_DIR && !env.PEERCACHE_STATE_DIR) return { ...env, PEERCACHE_STATE_DIR: `${env.PEERCACHE_CACHE_DIR}-state` };
  return env;
}

export function launchChromium(userDataDir, env) {
  env = withState(env);
  return chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    acceptDownloads: true,
    ignoreHTTPSErrors: true,
    ignoreDefaultArgs: ['--disable-extensions', '--disable-component-extensions-with-background-pages'],
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--ignore-certificate-errors',
      `--disable-extensions-except=${EXT_CHROMIUM}`, `--load-extension=${EXT_CHROMIUM}`, '--remote-debugging-port=0',
    ],
    env: { ...process.env, ...env },
  });
}

/**
 * Headless Firefox ESR with `HOME=home` (where the host and any managed policy are
 * registered), the extension installed over WebDriver BiDi under the fixed `uuid`,
 * downloads saved to `downloads` if given, on the profile directory `profile` if
 * given (to restart with the same one). `env` reaches the native host.
 */
export async function launchFirefox(home, { uuid, env = {}, prefs = {}, downloads = null, profile = undefined }) {
  env = withState(env);
  const browser = await puppeteer.launch({
    browser: 'firefox',
    executablePath: FIREFOX,
    userDataDir: profile,
    headless: true,
    acceptInsecureCerts: true,
    env: { ...process.env, HOME: home, ...env },
    extraPrefsFirefox: {
      'extensions.webextensions.uuids': JSON.stringify({ [GECKO_ID]: uuid }),
      'extensions.background.idle.timeout': 300000,
      // The extension asks for each site (optional host permissions); this
      // answers Firefox's prompt with yes, as a user clicking "Allow" would.
      'extensions.webextOptionalPermissionPrompts': false,
      // The extension is installed over WebDriver BiDi as a temporary add-on; keep
      // its storage when it is removed at shutdown, as a normal install would.
      'extensions.webextensions.keepStorageOnUninstall': true,
      // Each load of the assets page is a first visit: the site now answers a
      // browser's revalidation with 304 (its own cache, no body anywhere), and
      // these tests follow the bodies through the host and the peers.
      'browser.cache.disk.enable': false,
      'browser.cache.memory.enable': false,
      ...(downloads ? {
        'browser.download.dir': downloads,
        'browser.download.folderList': 2,
        'browser.download.useDownloadDir': true,
        'browser.download.always_ask_before_handling_new_types': false,
        'browser.download.start_downloads_in_tmp_dir': false,
      } : {}),
      ...prefs,
    },
  });
  const id = await browser.installExtension(EXT_FIREFOX);
  if (id !== GECKO_ID) throw new Error(`installed as ${id}, expected ${GECKO_ID}`);
  return browser;
}

/**
 * In the popup shown in `page`, allows `site` the way a user does (types it,
 * clicks "Allow"), and waits until the extension found the site's offer.
 */
export async function allowSite(page, site) {
  await page.$eval('#add-site-url', (e, v) => { e.value = v; }, site);
  await page.$eval('#add-site-result', (e) => { delete e.dataset.offered; e.textContent = ''; });
  await page.click('#add-site-go');
  const offered = await page.waitForSelector('#add-site-result[data-offered]', { timeout: 20000 });
  const text = await offered.evaluate((e) => `${e.dataset.offered}: ${e.textContent}`);
  if (!text.startsWith('true')) throw new Error(`${site} was not allowed: ${text}`);
}

/**
 * Loads the assets page in `page` (Playwright or Puppeteer), checks that it is
 * whole, and returns what it cost: referrals and headers-only answers at the
 * server, bytes the server sent, and requests and bytes `peer` uploaded.
 */
export async function loadAssets(page, state, peer) {
  const before = await serverMetrics(state);
  const peerBefore = await peerMetrics(peer);
  await page.goto(`${SITE}/assets.html`);
  await page.waitForFunction(() => window.appLoaded === 'ok' && document.getElementById('pic').complete);
  const width = await page.evaluate(() => document.getElementById('pic').naturalWidth);
  if (width !== 120) throw new Error(`the page's image is broken (width ${width})`);
  const after = await serverMetrics(state);
  const peerAfter = await peerMetrics(peer);
  const d = (a, b, name) => (a[name] ?? 0) - (b[name] ?? 0);
  return {
    referred: d(after, before, 'peercache_requests_referred_total'),
    headersOnly: d(after, before, 'peercache_requests_headers_only_total'),
    bytesServed: d(after, before, 'peercache_served_bytes_total'),
    peerUploads: d(peerAfter, peerBefore, 'peercache_uploads_total'),
    peerUploaded: d(peerAfter, peerBefore, 'peercache_bytes_uploaded_total'),
  };
}

/** Median duration (ms) of the assets page's image over `n` loads of it in `page`. */
export async function imageMedian(page, n) {
  const times = [];
  for (let i = 0; i < n; i++) {
    await page.goto(`${SITE}/assets.html`);
    await page.waitForFunction(() => document.getElementById('pic').complete && window.appLoaded === 'ok');
    times.push(await page.evaluate(() => performance.getEntriesByType('resource').find((e) => e.name.includes('pic.svg')).duration));
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}

const sh = (cmd, args) => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString();

export function sha256(buf) {
  return createHash('sha256').update(buf).digest('hex');
}

/** A child process whose stdout/stderr go to a log file; resolves the first stdout line matching `ready`. */
function start(name, cmd, args, { dir, ready, env }) {
  const log = join(dir, `${name}.log`);
  const out = createWriteStream(log);
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  child.stderr.pipe(out);
  let buffered = '';
  const seen = new Promise((resolveSeen, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} did not start; see ${log}`)), 30000);
    child.stdout.on('data', (d) => {
      out.write(d);
      buffered += d.toString();
      const m = buffered.match(ready);
      if (m) { clearTimeout(timer); resolveSeen({ match: m, text: buffered }); }
    });
    child.on('exit', (code) => { clearTimeout(timer); reject(new Error(`${name} exited with ${code}; see ${log}`)); });
  });
  return { child, log, seen };
}

/** Runs a command; resolves its stderr (or its stdout when `wantStdout`). */
function run(cmd, args, env = {}, wantStdout = false) {
  return new Promise((res, rej) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let err = '';
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    child.on('exit', (code) => (code === 0 ? res(wantStdout ? out : err) : rej(new Error(`${cmd} ${args.join(' ')} failed (${code}): ${err}`))));
  });
}

function svg(label) {
  // A visible image with padding so it is worth fetching from a peer.
  const pad = `<!-- ${randomBytes(24000).toString('hex')} -->`;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="120" height="40">${pad}<rect width="120" height="40" fill="#2a7"/><text x="8" y="26" fill="#fff">${label}</text></svg>`;
}

/** Builds the site, certificates and network namespace; starts the server and peers. */
export async function startSwarm({ bigSize = 8 << 20 } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'peercache-e2e-'));
  const ns = `pce2e${process.pid}`;
  const state = { dir, ns, procs: [] };

  // Certificates: a test CA and a leaf for the documentation address.
  const ca = join(dir, 'ca.pem');
  sh('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', join(dir, 'ca.key'), '-out', ca, '-days', '2', '-subj', '/CN=peercache test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  sh('openssl', ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', join(dir, 'site.key'), '-out', join(dir, 'site.csr'), '-subj', `/CN=${SITE_IP}`]);
  writeFileSync(join(dir, 'ext.cnf'), `subjectAltName=IP:${SITE_IP},IP:${COOKIE_SITE_IP}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n`);
  sh('openssl', ['x509', '-req', '-in', join(dir, 'site.csr'), '-CA', ca, '-CAkey', join(dir, 'ca.key'),
    '-CAcreateserial', '-out', join(dir, 'site.pem'), '-days', '2', '-extfile', join(dir, 'ext.cnf')]);
  state.ca = readFileSync(ca);
  state.caPath = ca;

  // The site.
  const site = join(dir, 'site');
  mkdirSync(join(site, 'static'), { recursive: true });
  state.files = {
    big: randomBytes(bigSize),
    lie: randomBytes(2 << 20),
    slow: randomBytes(8 << 20),
    pic: Buffer.from(svg('peercache')),
    app: Buffer.from(`window.appLoaded = 'ok'; /* ${randomBytes(20000).toString('hex')} */\n`),
  };
  writeFileSync(join(site, 'static/big.bin'), state.files.big);
  writeFileSync(join(site, 'static/lie.bin'), state.files.lie);
  writeFileSync(join(site, 'static/slow.bin'), state.files.slow);
  writeFileSync(join(site, 'static/pic.svg'), state.files.pic);
  writeFileSync(join(site, 'static/app.js'), state.files.app);
  state.files.index = Buffer.from(`<!doctype html><html><head><title>test site</title></head><body>
<h1>A public test site</h1>
<p><a id="big" href="/static/big.bin">the large file</a> · <a id="lie" href="/static/lie.bin">another file</a></p>
</body></html>`);
  writeFileSync(join(site, 'index.html'), state.files.index);
  writeFileSync(join(site, 'assets.html'), `<!doctype html><html><head><title>assets</title></head><body>
<img id="pic" src="/static/pic.svg" alt="picture">
<script src="/static/app.js"></script>
</body></html>`);

  // The network: a namespace holding the site at a public-looking address.
  sh('ip', ['netns', 'add', ns]);
  state.netns = true;
  const vh = `pch${process.pid % 100000}`;
  const vs = `pcs${process.pid % 100000}`;
  sh('ip', ['link', 'add', vh, 'type', 'veth', 'peer', 'name', vs]);
  sh('ip', ['link', 'set', vs, 'netns', ns]);
  // No IPv6 on the test link: its link-local address would appear a moment after
  // the link comes up, and browsers abort requests in flight on such a network
  // change (ERR_NETWORK_CHANGED).
  sh('sysctl', ['-q', '-w', `net.ipv6.conf.${vh}.disable_ipv6=1`]);
  sh('ip', ['netns', 'exec', ns, 'sysctl', '-q', '-w', `net.ipv6.conf.${vs}.disable_ipv6=1`]);
  sh('ip', ['addr', 'add', `${HOST_IP}/24`, 'dev', vh]);
  sh('ip', ['link', 'set', vh, 'up']);
  sh('ip', ['netns', 'exec', ns, 'ip', 'addr', 'add', `${SITE_IP}/24`, 'dev', vs]);
  sh('ip', ['netns', 'exec', ns, 'ip', 'addr', 'add', `${COOKIE_SITE_IP}/24`, 'dev', vs]);
  sh('ip', ['netns', 'exec', ns, 'ip', 'link', 'set', vs, 'up']);
  sh('ip', ['netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up']);
  state.veth = vh;

  const server = start('server', 'ip', ['netns', 'exec', ns, join(BIN, 'peercache-server'),
    '--root', site, '--listen', `${SITE_IP}:443`, '--admin-listen', `${SITE_IP}:9090`, '--tls-cert', join(dir, 'site.pem'), '--tls-key', join(dir, 'site.key'),
    '--egress-limit', '4MiB', '--target-period', '0s'], { dir, ready: /listening on (\S+)/ });
  state.procs.push(server.child);
  await server.seen;

  // The second site: an origin with a cookie-setting asset, behind the real server.
  const origin = start('origin', 'ip', ['netns', 'exec', ns, process.execPath, join(ROOT, 'tests/e2e/origin.mjs'),
    '127.0.0.1', '8081'], { dir, ready: /origin listening/ });
  state.procs.push(origin.child);
  await origin.seen;
  const upstream = start('cookie-server', 'ip', ['netns', 'exec', ns, join(BIN, 'peercache-server'),
    '--upstream', 'http://127.0.0.1:8081', '--upstream-cache', join(dir, 'upstream-cache'),
    '--listen', `${COOKIE_SITE_IP}:443`, '--admin-listen', `${COOKIE_SITE_IP}:9090`, '--tls-cert', join(dir, 'site.pem'), '--tls-key', join(dir, 'site.key'),
    '--egress-limit', '4MiB', '--target-period', '0s'], { dir, ready: /listening on (\S+)/ });
  state.procs.push(upstream.child);
  await upstream.seen;
  /** What the origin saw, per path: requests and how many carried the session cookie. */
  state.originCounts = async () => JSON.parse((await run('ip', ['netns', 'exec', ns, 'curl', '-s', 'http://127.0.0.1:8081/counts'], {}, true)));

  for (const name of ['shared', 'session']) {
    state.cookieFiles = state.cookieFiles ?? {};
    state.cookieFiles[name] = Buffer.from(await run('ip', ['netns', 'exec', ns, 'curl', '-s',
      `http://127.0.0.1:8081/static/${name}.js`], {}, true));
  }
  state.peers = {};
  state.addPeer = async (name, paths, extraArgs = []) => {
    const cache = join(dir, `peer-${name}`);
    for (const p of paths) {
      await run(join(BIN, 'peercache-host'), ['fetch', '--server', SITE, p, '-o', join(dir, `${name}.out`), '--cache', cache,
        '--state', `${cache}-state`, '--ca-cert', ca]);
    }
    const peer = start(`peer-${name}`, join(BIN, 'peercache-host'), ['serve', '--server', SITE, '--cache', cache,
      '--state', `${cache}-state`, '--listen', '0.0.0.0:0', '--ca-cert', ca, ...extraArgs], { dir, ready: /announced (\d+) of (\d+)/ });
    state.procs.push(peer.child);
    const { match: m, text } = await peer.seen;
    // The port of its operator-only /metrics listener (the peer endpoint itself is QUIC).
    const port = text.match(/metrics on [\d.]+:(\d+)/)?.[1];
    const udpPort = text.match(/peer endpoint on udp port (\d+)/)?.[1];
    state.peers[name] = { cache, port: Number(port), udpPort: Number(udpPort), announced: Number(m[1]), child: peer.child };
    return state.peers[name];
  };
  return state;
}

export async function stopSwarm(state) {
  if (!state) return;
  for (const p of state.procs) { try { p.kill('SIGTERM'); } catch (_) { /* gone */ } }
  await new Promise((r) => setTimeout(r, 300));
  if (state.netns) { try { sh('ip', ['netns', 'del', state.ns]); } catch (_) { /* gone */ } }
  if (state.veth) { try { sh('ip', ['link', 'del', state.veth]); } catch (_) { /* gone with the namespace */ } }
  if (!process.env.PEERCACHE_KEEP) rmSync(state.dir, { recursive: true, force: true });
}

/** GET over https trusting the test CA (or plain http). */
export function get(url, ca) {
  return new Promise((res, rej) => {
    const mod = url.startsWith('https:') ? https : http;
    const req = mod.get(url, { ca }, (r) => {
      const chunks = [];
      r.on('data', (c) => chunks.push(c));
      r.on('end', () => res({ status: r.statusCode, headers: r.headers, body: Buffer.concat(chunks) }));
    });
    req.on('error', rej);
  });
}

/** Prometheus text → { name: sum over label sets }. */
export async function metrics(url, ca) {
  const r = await get(url, ca);
  const out = {};
  for (const line of r.body.toString().split('\n')) {
    const m = line.match(/^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$/);
    if (m) out[m[1]] = (out[m[1]] ?? 0) + Number(m[3]);
  }
  return out;
}

export async function serverMetrics(state, site = SITE) {
  const admin = site === COOKIE_SITE ? COOKIE_SITE_ADMIN : SITE_ADMIN;
  return metrics(`${admin}/metrics`, state.ca);
}

export async function peerMetrics(peer) {
  return metrics(`http://127.0.0.1:${peer.port}/metrics`);
}

/** Writes Firefox's managed storage manifest for the extension under `home` (what policies.json's 3rdparty section also sets). */
export function firefoxManagedPolicy(home, data) {
  const dir = join(home, '.mozilla/managed-storage');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'peercache@peercache.org.json'), JSON.stringify({
    name: 'peercache@peercache.org', description: 'peercache settings set by the administrator', type: 'storage', data,
  }));
}

/** The pid of the native host the browser started with PEERCACHE_CACHE_DIR=`cacheDir`. */
export function hostPid(cacheDir) {
  for (const pid of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (!cmd.includes('peercache-host')) continue;
      const env = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
      if (env.includes(`PEERCACHE_CACHE_DIR=${cacheDir}`)) return Number(pid);
    } catch (_) { /* gone */ }
  }
  return null;
}

/** Does the host cache in `dir` hold an object with exactly these bytes? */
export function cacheHolds(dir, bytes) {
  const objects = join(dir, 'objects');
  if (!existsSync(objects)) return false;
  return readdirSync(objects)
    .filter((n) => /^[0-9a-f]{64}$/.test(n))
    .some((n) => statSync(join(objects, n)).size === bytes.length && readFileSync(join(objects, n)).equals(bytes));
}

export async function waitFor(what, fn, timeoutMs = 20000) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Registers the host for a Chromium profile with the real install command. */
export async function installHostForChromium(userDataDir) {
  await run(join(BIN, 'peercache-host'), ['install', '--browser', 'chromium', '--user-data-dir', userDataDir]);
}

/**
 * The popup's "Why" rows (`View.why`) for a host status with recent downloads
 * (extension/test/fixtures/status-recent.json, its first site moved to `site`),
 * made by the built wasm brain, and a function that makes an open popup show
 * them: the host does not send explanations in these runs, so the popup's
 * answers from the background get them added.
 */
export async function whyFixture(site) {
  const { connectedBrain, SITE: FIXTURE_SITE } = await import('../../extension/test/brain.mjs');
  const status = JSON.parse(readFileSync(join(ROOT, 'extension/test/fixtures/status-recent.json'), 'utf8')
    .replaceAll(FIXTURE_SITE, site));
  const brain = await connectedBrain();
  brain.on_host_message(status);
  const why = brain.view().why;
  const inject = (rows) => {
    const api = globalThis.browser ?? globalThis.chrome;
    const ask = api.runtime.sendMessage.bind(api.runtime);
    api.runtime.sendMessage = (msg) => ask(msg).then((v) => (v && !v.error ? { ...v, why: rows } : v));
  };
  /** Whether the Why section is wider than the popup's body, or a line in it wider than its box. */
  const overflow = () => {
    const why = document.getElementById('why');
    return {
      page: why.scrollWidth > why.clientWidth || why.getBoundingClientRect().right > document.body.getBoundingClientRect().right,
      cut: [...document.querySelectorAll('#why li, #why li *')]
        .filter((e) => e.scrollWidth > e.clientWidth + 1).map((e) => e.textContent),
    };
  };
  return { why, inject, overflow };
}
