// Extension benchmarks in Firefox ESR (BENCHMARKS.md, issue 5), the same figures
// as bench-extension.mjs measures in Chromium:
//   node tests/e2e/bench-extension-firefox.mjs   (as root; after scripts/build-extension.sh)
// - time from browser start to the background being ready (Firefox installs the
//   extension over WebDriver BiDi after start, so this includes the install);
// - added time for an intercepted image the host already holds (filterResponseData
//   fills the body of the original request from the gateway), against direct;
// - download throughput through the extension against a direct download.
import { mkdtempSync, readFileSync, readdirSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import {
  BIN, SITE, startSwarm, stopSwarm, waitFor, sha256, firefoxManagedPolicy, launchFirefox, imageMedian, allowSite,
} from './harness.mjs';

const UUID = '3c9a6e1d-7b24-4f58-9e0a-5d1c2b3a4f6e';
const POPUP = `moz-extension://${UUID}/popup.html`;
const swarm = await startSwarm({ bigSize: 16 << 20 });
const home = mkdtempSync(join(tmpdir(), 'peercache-ffbench-'));
const downloads = join(home, 'downloads');
let browser;
try {
  await swarm.addPeer('honest', ['/static/big.bin', '/static/pic.svg', '/static/app.js']);
  mkdirSync(downloads);
  mkdirSync(join(home, 'host-cache'));
  execFileSync(join(BIN, 'peercache-host'), ['install', '--browser', 'firefox'], { env: { ...process.env, HOME: home } });
  firefoxManagedPolicy(home, { sites: [SITE] });
  const t0 = Date.now();
  browser = await launchFirefox(home, {
    uuid: UUID,
    downloads,
    env: { PEERCACHE_CACHE_DIR: join(home, 'host-cache'), PEERCACHE_CA_CERT: swarm.caPath },
  });
  const popup = await browser.newPage();
  await popup.goto(`${SITE}/`);
  await popup.evaluate((u) => { location.href = u; }, POPUP);
  await waitFor('ready', async () => {
    try {
      return await popup.evaluate(async () => {
        const w = await browser.runtime.getBackgroundPage();
        return !!(w.peercache?.ready && w.peercache.hostSeen);
      });
    } catch (_) { return false; }
  }, 30000);
  await allowSite(popup, SITE);
  console.log(`browser start to background ready (including the extension install): ${Date.now() - t0} ms`);
  await waitFor('rules', async () => (await popup.evaluate(async () => (await browser.declarativeNetRequest.getSessionRules()).length)) === 2);

  const page = await browser.newPage();
  const imageTimes = (n) => imageMedian(page, n);
  const downloadTime = async () => {
    const page = await browser.newPage();
    await page.goto(`${SITE}/`);
    const before = readdirSync(downloads);
    const t = Date.now();
    await page.click('#big');
    const file = await waitFor('the download', () => {
      const all = readdirSync(downloads);
      if (all.some((f) => f.endsWith('.part'))) return null;
      const f = all.filter((n) => !before.includes(n)).map((n) => join(downloads, n))
        .find((p) => readFileSync(p).length === swarm.files.big.length);
      return f ?? null;
    }, 60000);
    const secs = (Date.now() - t) / 1000;
    await page.close();
    if (sha256(readFileSync(file)) !== sha256(swarm.files.big)) throw new Error('bad download');
    return secs;
  };

  await imageTimes(2);
  const viaCache = await imageTimes(15);
  const dlPeer = await downloadTime();
  const dlCache = await downloadTime();
  await popup.click('#toggle');
  await waitFor('rules off', async () => (await popup.evaluate(async () => (await browser.declarativeNetRequest.getSessionRules()).length)) === 0);
  const direct = await imageTimes(15);
  const dlDirect = await downloadTime();
  console.log(`image (48 KiB) median load: ${viaCache.toFixed(1)} ms intercepted from the host's cache, ${direct.toFixed(1)} ms straight from the site; ratio ${(viaCache / direct).toFixed(2)}`);
  const mib = swarm.files.big.length / 1048576;
  console.log(`16 MiB download: through the extension from a peer ${(mib / dlPeer).toFixed(0)} MiB/s, from the host's cache ${(mib / dlCache).toFixed(0)} MiB/s; straight from the site (capped at 4 MiB/s) ${(mib / dlDirect).toFixed(1)} MiB/s`);
} finally {
  await browser?.close();
  await stopSwarm(swarm);
  rmSync(home, { recursive: true, force: true });
}
