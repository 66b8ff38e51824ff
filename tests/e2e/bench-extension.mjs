// Extension benchmarks (BENCHMARKS.md, issue 5), Chromium:
//   node tests/e2e/bench-extension.mjs        (as root; builds nothing: run scripts/build-extension.sh first)
// - time from browser start to the background being ready (wasm loaded, host connected, rules in force);
// - added time for an intercepted image the host already holds, against the same image straight from the site;
// - download throughput through the extension (gateway, verified, from the host's cache or a peer) against direct.
import { mkdtempSync, readFileSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  SITE, CHROMIUM_ID, startSwarm, stopSwarm, waitFor, installHostForChromium, sha256, serverMetrics, launchChromium, imageMedian,
} from './harness.mjs';

const swarm = await startSwarm({ bigSize: 16 << 20 });
const udd = mkdtempSync(join(tmpdir(), 'peercache-bench-'));
try {
  await swarm.addPeer('honest', ['/static/big.bin', '/static/pic.svg', '/static/app.js']);
  await installHostForChromium(udd);
  mkdirSync(join(swarm.dir, 'host'), { recursive: true });
  const t0 = Date.now();
  const context = await launchChromium(udd, { PEERCACHE_CACHE_DIR: join(swarm.dir, 'host'), PEERCACHE_CA_CERT: swarm.caPath });
  const worker = context.serviceWorkers()[0] ?? await context.waitForEvent('serviceworker');
  await waitFor('ready', () => worker.evaluate(() => globalThis.peercache?.ready && globalThis.peercache.hostSeen), 30000);
  console.log(`browser start to background ready: ${Date.now() - t0} ms`, JSON.stringify(await worker.evaluate(() => globalThis.peercache.timings)));

  const page = await context.newPage();
  await page.goto(`${SITE}/`);
  const popup = await context.newPage();
  await popup.goto(`chrome-extension://${CHROMIUM_ID}/popup.html`);
  await popup.locator(`.site-switch[data-origin="${SITE}"]`).click();
  const cdp = await context.newCDPSession(page);
  await cdp.send('Browser.grantPermissions', { origin: SITE, permissions: ['loopbackNetwork', 'localNetwork'] });
  await page.goto(`${SITE}/`);
  await waitFor('subresource rules', () => worker.evaluate(async () => (await chrome.declarativeNetRequest.getSessionRules())
    .some((r) => r.action.type === 'redirect' && r.condition.resourceTypes.includes('image'))));

  const imageTimes = (n) => imageMedian(page, n);
  const downloadTime = async () => {
    await page.goto(`${SITE}/`);
    const t = Date.now();
    const [d] = await Promise.all([page.waitForEvent('download'), page.click('#big')]);
    const bytes = readFileSync(await d.path());
    if (sha256(bytes) !== sha256(swarm.files.big)) throw new Error('bad download');
    return (Date.now() - t) / 1000;
  };

  await imageTimes(2); // the host fetches pic.svg once and keeps it
  const viaCache = await imageTimes(15);
  const m0 = await serverMetrics(swarm);
  const dlPeer = await downloadTime(); // from the peer, verified
  const m1 = await serverMetrics(swarm);
  console.log(`(first download: ${m1.peercache_requests_referred_total - m0.peercache_requests_referred_total} referral, ${m1.peercache_served_bytes_total - m0.peercache_served_bytes_total} bytes from the server, ${m1.peercache_requests_deferred_total - m0.peercache_requests_deferred_total} deferrals)`);
  const dlCache = await downloadTime(); // from the host's own cache, re-verified
  await popup.click('#toggle');
  await waitFor('rules off', async () => (await worker.evaluate(async () => (await chrome.declarativeNetRequest.getSessionRules()).length)) === 0);
  const direct = await imageTimes(15);
  const dlDirect = await downloadTime();
  console.log(`image (48 KiB) median load: ${viaCache.toFixed(1)} ms intercepted from the host's cache, ${direct.toFixed(1)} ms straight from the site; ratio ${(viaCache / direct).toFixed(2)}`);
  const mib = swarm.files.big.length / 1048576;
  console.log(`16 MiB download: through the extension from a peer ${(mib / dlPeer).toFixed(0)} MiB/s, from the host's cache ${(mib / dlCache).toFixed(0)} MiB/s; straight from the site (capped at 4 MiB/s, as in every e2e run) ${(mib / dlDirect).toFixed(0)} MiB/s; ratios ${(dlDirect / dlPeer).toFixed(2)} and ${(dlDirect / dlCache).toFixed(2)}`);
  await context.close();
} finally {
  await stopSwarm(swarm);
  rmSync(udd, { recursive: true, force: true });
}
