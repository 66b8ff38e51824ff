// Firefox ESR end to end (issue 5): the same extension (dist/firefox) and the real
// native host, driven over WebDriver BiDi with puppeteer-core, against the
// public-looking https site. Navigations and downloads are redirected to the
// gateway; subresources keep their original request, whose body the background
// replaces with verified bytes from the gateway while the server sends headers only.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, mkdirSync, readdirSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import {
  ROOT, BIN, SITE, SITE_ADMIN, COOKIE_SITE, startSwarm, stopSwarm, serverMetrics, peerMetrics, waitFor, sha256, get, cacheHolds,
  firefoxManagedPolicy, launchFirefox, hostPid, whyFixture, allowSite,
} from './harness.mjs';

const UUID = '6f1d3c1e-8a2b-4c5d-9e0f-1a2b3c4d5e6f';
const POPUP = `moz-extension://${UUID}/popup.html`;

describe('firefox: peer delivery through the extension', { concurrency: false }, () => {
  let swarm;
  let browser;
  let home;
  let downloads;
  let profile;
  let launchOptions;

  /** A tab showing the popup (navigated from a web page: moz-extension URLs cannot be opened with goto). */
  const popup = async () => {
    const page = await browser.newPage();
    await page.goto(`${SITE}/`);
    await page.evaluate((u) => { location.href = u; }, POPUP);
    await waitFor('the popup', async () => {
      try { return (await page.evaluate(() => location.href)) === POPUP && await page.$('#toggle'); } catch (_) { return false; }
    });
    return page;
  };
  const backgroundReady = (page) => page.evaluate(async () => {
    const w = await browser.runtime.getBackgroundPage();
    return !!(w.peercache?.ready && w.peercache.hostSeen);
  });
  const ruleCount = (page) => page.evaluate(async () => (await browser.declarativeNetRequest.getSessionRules()).length);
  const newDownload = async (before, size) => waitFor('a finished download', () => {
    const all = readdirSync(downloads);
    if (all.some((f) => f.endsWith('.part'))) return null;
    const files = all.filter((f) => !before.includes(f)).map((f) => join(downloads, f));
    return files.find((f) => readFileSync(f).length === size) ?? null;
  }, 60000);

  before(async () => {
    swarm = await startSwarm();
    await swarm.addPeer('honest', ['/static/big.bin', '/static/pic.svg', '/static/app.js']);
    const liar = await swarm.addPeer('liar', ['/static/lie.bin']);
    // Holds one file and sends it at 512 KiB/s, so a transfer can be caught mid-way.
    await swarm.addPeer('slow', ['/static/slow.bin'], ['--upload-limit', '512KiB']);
    // It computed the true group CVs, then its copy went bad: a valid outboard with wrong bytes.
    const liarHash = readdirSync(join(liar.cache, 'objects')).find((n) => /^[0-9a-f]{64}$/.test(n));
    // Its verification data was computed when it kept the object.
    assert.ok(existsSync(join(liar.cache, 'outboard', liarHash)));
    const liarFile = join(liar.cache, 'objects', liarHash);
    const bad = readFileSync(liarFile);
    bad[1000] ^= 0xff;
    writeFileSync(liarFile, bad);
    home = mkdtempSync(join(tmpdir(), 'peercache-firefox-home-'));
    downloads = join(home, 'downloads');
    mkdirSync(downloads);
    execFileSync(join(BIN, 'peercache-host'), ['install', '--browser', 'firefox'], { env: { ...process.env, HOME: home } });
    assert.ok(existsSync(join(home, '.mozilla/native-messaging-hosts/org.peercache.host.json')));
    // The administrator switches the second site on for everyone (managed storage).
    firefoxManagedPolicy(home, { sites: [COOKIE_SITE] });
    mkdirSync(join(swarm.dir, 'ff-host'), { recursive: true });
    profile = join(home, 'profile');
    mkdirSync(profile);
    browser = await launchFirefox(home, launchOptions = {
      uuid: UUID,
      downloads,
      profile,
      env: {
        PEERCACHE_CACHE_DIR: join(swarm.dir, 'ff-host'),
        PEERCACHE_CA_CERT: swarm.caPath,
        PEERCACHE_LOG: join(swarm.dir, 'ff-host.log'),
      },
    });
    const p = await popup();
    await waitFor('the background to be ready', () => backgroundReady(p), 30000);
    await p.close();
  });

  after(async () => {
    await browser?.close();
    await stopSwarm(swarm);
    if (home) rmSync(home, { recursive: true, force: true });
  });

  it('asks for each site the user allows, then enrols it from the popup switch', async () => {
    const p = await popup();
    await p.waitForSelector('#host-status[data-state="connected"]');
    // The site was just visited (popup() went through it), but the extension may
    // not reach it: it saw nothing, and holds no site but the local gateway.
    assert.equal(await p.$(`.site-switch[data-origin="${SITE}"]`), null, 'not seen without access');
    assert.deepEqual((await p.evaluate(() => browser.permissions.getAll())).origins, ['http://127.0.0.1/*']);
    await allowSite(p, SITE);
    const granted = (await p.evaluate(() => browser.permissions.getAll())).origins.sort();
    assert.deepEqual(granted, ['http://127.0.0.1/*', `${SITE}/*`].sort(), 'exactly that site');
    await p.waitForSelector(`.site-switch[data-origin="${SITE}"]`);
    assert.equal(await ruleCount(p), 0);
    // A site without an offer (the operator listener, no Peercache header) gets
    // its permission handed back at once.
    await p.$eval('#add-site-url', (e, v) => { e.value = v; }, SITE_ADMIN);
    await p.click('#add-site-go');
    await p.waitForSelector('#add-site-result[data-offered="false"]', { timeout: 20000 });
    assert.match(await p.$eval('#add-site-result', (e) => e.textContent), /does not offer delivery through peers/);
    await waitFor('the permission handed back', async () => (await p.evaluate(() => browser.permissions.getAll()))
      .origins.length === 2);
    assert.deepEqual((await p.evaluate(() => browser.permissions.getAll())).origins.sort(),
      ['http://127.0.0.1/*', `${SITE}/*`].sort());
    assert.equal(await p.$(`.site-switch[data-origin="${SITE_ADMIN}"]`), null);
    await p.click(`.site-switch[data-origin="${SITE}"]`);
    await waitFor('rules', async () => (await ruleCount(p)) === 2);
    await p.close();
  });

  it('downloads the large file from the peer, byte-identical', async () => {
    const before = await serverMetrics(swarm);
    const peerBefore = await peerMetrics(swarm.peers.honest);
    const existing = readdirSync(downloads);
    const page = await browser.newPage();
    await page.goto(`${SITE}/`);
    await page.click('#big');
    const file = await newDownload(existing, swarm.files.big.length);
    assert.equal(sha256(readFileSync(file)), sha256(swarm.files.big));
    const after = await serverMetrics(swarm);
    const peerAfter = await peerMetrics(swarm.peers.honest);
    assert.equal(after.peercache_requests_referred_total - before.peercache_requests_referred_total, 1, 'the server referred');
    assert.equal(peerAfter.peercache_bytes_uploaded_total - peerBefore.peercache_bytes_uploaded_total, swarm.files.big.length, 'the peer uploaded');
    await page.close();
  });

  it("shows the page's image and script from the peer, the server sending headers only", async () => {
    const before = await serverMetrics(swarm);
    const peerBefore = await peerMetrics(swarm.peers.honest);
    const page = await browser.newPage();
    await page.goto(`${SITE}/assets.html`);
    await page.waitForFunction(() => window.appLoaded === 'ok' && document.getElementById('pic').complete);
    assert.equal(await page.evaluate(() => document.getElementById('pic').naturalWidth), 120);
    const after = await serverMetrics(swarm);
    const peerAfter = await peerMetrics(swarm.peers.honest);
    assert.equal(after.peercache_requests_headers_only_total - before.peercache_requests_headers_only_total, 2);
    assert.equal(after.peercache_requests_referred_total - before.peercache_requests_referred_total, 2);
    assert.equal(peerAfter.peercache_bytes_uploaded_total - peerBefore.peercache_bytes_uploaded_total,
      swarm.files.pic.length + swarm.files.app.length, 'the bytes came from the peer, once');
    await page.close();
  });

  it("never hands a lying peer's bytes to the user", async () => {
    const before = await serverMetrics(swarm);
    const existing = readdirSync(downloads);
    const page = await browser.newPage();
    await page.goto(`${SITE}/`);
    await page.click('#lie');
    const file = await newDownload(existing, swarm.files.lie.length);
    assert.equal(sha256(readFileSync(file)), sha256(swarm.files.lie), 'the true bytes arrived');
    const after = await serverMetrics(swarm);
    assert.equal(after.peercache_mismatch_reports_total - before.peercache_mismatch_reports_total, 1);
    await page.close();
  });

  it('with the toggle off, the bytes come straight from the server', async () => {
    const p = await popup();
    await p.click('#toggle');
    await waitFor('rules removed', async () => (await ruleCount(p)) === 0);
    const before = await serverMetrics(swarm);
    const page = await browser.newPage();
    await page.goto(`${SITE}/assets.html`);
    await page.waitForFunction(() => window.appLoaded === 'ok' && document.getElementById('pic').complete);
    const after = await serverMetrics(swarm);
    assert.equal(after.peercache_requests_referred_total, before.peercache_requests_referred_total);
    assert.equal(after.peercache_requests_headers_only_total, before.peercache_requests_headers_only_total);
    assert.ok(after.peercache_served_bytes_total - before.peercache_served_bytes_total >= swarm.files.pic.length + swarm.files.app.length);
    await p.click('#toggle');
    await waitFor('rules back', async () => (await ruleCount(p)) === 2);
    if (process.env.PEERCACHE_SCREENSHOTS) {
      await p.setViewport({ width: 360, height: 640 });
      await p.screenshot({ path: join(ROOT, 'docs/popup-firefox.png') });
    }
    await p.close();
    await page.close();
  });

  it('lists the peers that served this browser in the popup', async () => {
    const p = await popup();
    const row = await p.waitForSelector(`.peer[data-site="${SITE}"][data-addr$=":${swarm.peers.honest.udpPort}"]`, { timeout: 10000 });
    assert.match(await row.evaluate((e) => e.textContent), /MiB/);
    await p.close();
  });

  it('the popup says why recent files came as they did, readable at its size', async () => {
    const { why, inject, overflow } = await whyFixture(SITE);
    const p = await popup();
    await p.setViewport({ width: 360, height: 600 });
    await p.evaluate(inject, why);
    // Opened as a tab, the popup has no web page as active tab: every site's files, each naming its site.
    await p.waitForFunction(() => document.querySelectorAll('#why .why').length === 3, { timeout: 10000 });
    assert.equal(await p.$eval('#why-site', (e) => e.textContent), '(all sites)');
    const rows = await p.$$eval('#why .why', (lis) => lis.map((li) => ({ came: li.dataset.came, text: li.innerText })));
    assert.deepEqual(rows.map((r) => r.came), ['peers', 'server', 'cache']);
    assert.match(rows[0].text, new RegExp(`release-candidate\\.webm \\(${SITE.replaceAll('.', '\\.')}\\)`));
    assert.match(rows[1].text, /logo\.svg \(https:\/\/other\.example\)/);
    assert.match(rows[1].text, /within the target period/);
    assert.deepEqual(await p.evaluate(overflow), { page: false, cut: [] }, 'nothing is cut off');
    if (process.env.PEERCACHE_SCREENSHOTS) await p.screenshot({ path: join(ROOT, 'docs/popup-why-firefox.png'), fullPage: true });
    await p.close();
  });

  it('a response with Set-Cookie keeps its own body and cookie, and is never shared', async () => {
    // The second site is switched on by policy as soon as it advertises, and locked.
    const page = await browser.newPage();
    await page.goto(`${COOKIE_SITE}/`);
    const p = await popup();
    // Once the user allows the site, that is.
    await allowSite(p, COOKIE_SITE);
    const sw = await p.waitForSelector(`.site-switch[data-origin="${COOKIE_SITE}"]`);
    assert.equal(await sw.evaluate((e) => e.checked && e.disabled), true, 'on, and locked by the administrator');
    await p.close();
    const before = await serverMetrics(swarm, COOKIE_SITE);
    await page.goto(`${COOKIE_SITE}/cookie.html`);
    await page.waitForFunction(() => window.sharedLoaded === 'ok' && window.sessionLoaded === 'ok');
    assert.match(await page.evaluate(() => document.cookie), /session=s3cret/, 'the cookie reached the site at once');
    const mid = await serverMetrics(swarm, COOKIE_SITE);
    assert.equal(mid.peercache_requests_headers_only_total - (before.peercache_requests_headers_only_total ?? 0), 1,
      'only the shareable script was answered with headers only');
    const host = join(swarm.dir, 'ff-host');
    await waitFor('the shareable script kept', () => cacheHolds(host, swarm.cookieFiles.shared));
    assert.equal(cacheHolds(host, swarm.cookieFiles.session), false, 'the cookie-setting script was never kept');
    // With the cookie set, every request of the site carries it: none goes through
    // peers, and the site loses its redirect rules too (navigations cannot be
    // checked request by request).
    const p2 = await popup();
    await p2.waitForSelector(`.cookies[data-origin="${COOKIE_SITE}"]`);
    assert.equal(await p2.evaluate(async (site) => (await browser.declarativeNetRequest.getSessionRules())
      .some((r) => r.action.type === 'redirect' && r.condition.regexFilter.includes(site.replace(/\./g, '\\.'))), COOKIE_SITE), false);
    await p2.close();
    await page.goto(`${COOKIE_SITE}/cookie.html?again`);
    await page.waitForFunction(() => window.sharedLoaded === 'ok' && window.sessionLoaded === 'ok');
    const after = await serverMetrics(swarm, COOKIE_SITE);
    assert.equal(after.peercache_requests_headers_only_total, mid.peercache_requests_headers_only_total);
    const counts = await swarm.originCounts();
    assert.ok(counts['/cookie.html'].with_cookie >= 1, JSON.stringify(counts));
    assert.equal(cacheHolds(host, swarm.cookieFiles.session), false);
    await page.close();
  });

  it('a host that stalls mid-body: the rest of the body comes from the site (Range + If-Range), byte-identical', async () => {
    const pid = hostPid(join(swarm.dir, 'ff-host'));
    assert.ok(pid);
    const before = await serverMetrics(swarm);
    const slowBefore = await peerMetrics(swarm.peers.slow);
    const page = await browser.newPage();
    await page.goto(`${SITE}/`);
    await page.evaluate(() => {
      window.slowReceived = 0;
      (async () => {
        const resp = await fetch('/static/slow.bin');
        const reader = resp.body.getReader();
        const parts = [];
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          parts.push(value);
          window.slowReceived += value.byteLength;
        }
        const all = new Uint8Array(window.slowReceived);
        let at = 0;
        for (const p of parts) { all.set(p, at); at += p.byteLength; }
        const d = await crypto.subtle.digest('SHA-256', all);
        return [...new Uint8Array(d)].map((x) => x.toString(16).padStart(2, '0')).join('');
      })().then((hex) => { window.slowDone = hex; }, (e) => { window.slowDone = `error: ${e}`; });
    });
    // The first verified bytes reached the page (from the slow peer, through the
    // host): stop the host now, with most of the file still to come.
    await waitFor('the first bytes in the page', () => page.evaluate(() => window.slowReceived > 0), 20000);
    process.kill(pid, 'SIGSTOP');
    let digest;
    try {
      digest = await waitFor('the body', () => page.evaluate(() => window.slowDone ?? null), 40000);
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    assert.equal(digest, sha256(swarm.files.slow), 'byte-identical');
    const after = await serverMetrics(swarm);
    assert.equal(after.peercache_requests_headers_only_total - before.peercache_requests_headers_only_total, 1);
    assert.equal(after.peercache_range_requests_total - before.peercache_range_requests_total, 1, 'the rest by Range');
    assert.ok(after.peercache_served_bytes_total - before.peercache_served_bytes_total < swarm.files.slow.length,
      'only the rest came from the site');
    assert.ok((await peerMetrics(swarm.peers.slow)).peercache_bytes_uploaded_total > slowBefore.peercache_bytes_uploaded_total,
      'the first part came from the slow peer');
    const p = await popup();
    await waitFor('rules back', async () => (await ruleCount(p)) >= 2, 20000);
    await p.close();
    await page.close();
  });

  it('a host that stops answering never leaves a page short: the site fills in, and peers come back', async () => {
    const pid = hostPid(join(swarm.dir, 'ff-host'));
    assert.ok(pid, 'the browser started the host');
    const p = await popup();
    const rules = await ruleCount(p);
    assert.ok(rules >= 2, 'the token rule and the test site');
    process.kill(pid, 'SIGSTOP');
    try {
      // Intercepted while the host is silent: after 5 s without a first byte the
      // background takes the bodies from the site instead.
      const before = await serverMetrics(swarm);
      const page = await browser.newPage();
      await page.goto(`${SITE}/assets.html`);
      await page.waitForFunction(() => window.appLoaded === 'ok' && document.getElementById('pic').complete, { timeout: 30000 });
      assert.equal(await page.evaluate(() => document.getElementById('pic').naturalWidth), 120, 'the image is whole');
      const mid = await serverMetrics(swarm);
      assert.equal(mid.peercache_requests_headers_only_total - before.peercache_requests_headers_only_total, 2,
        'both were intercepted');
      assert.ok(mid.peercache_served_bytes_total - before.peercache_served_bytes_total
        >= swarm.files.pic.length + swarm.files.app.length, 'the site sent the bodies');
      // The watchdog takes the rules down.
      await waitFor('rules removed', async () => (await ruleCount(p)) === 0, 15000);
      await page.close();
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    await waitFor('rules back', async () => (await ruleCount(p)) === rules, 15000);
    const before = await serverMetrics(swarm);
    const page = await browser.newPage();
    await page.goto(`${SITE}/assets.html`);
    await page.waitForFunction(() => window.appLoaded === 'ok' && document.getElementById('pic').complete);
    const after = await serverMetrics(swarm);
    assert.equal(after.peercache_requests_headers_only_total - before.peercache_requests_headers_only_total, 2, 'through the host again');
    await page.close();
    await p.close();
  });

  it('settings survive a browser restart', async () => {
    const p = await popup();
    await p.$eval('#max-uploads', (e) => { e.value = '5'; });
    await p.click('#apply-limits');
    await p.waitForFunction(() => document.body.dataset.hostMaxUploads === '5');
    await p.close();
    await browser.close();
    browser = await launchFirefox(home, launchOptions);
    const q = await popup();
    await waitFor('the background to be ready', () => backgroundReady(q), 30000);
    const sw = await q.waitForSelector(`.site-switch[data-origin="${SITE}"]`);
    assert.equal(await sw.evaluate((e) => e.checked), true, 'the site is still switched on');
    await q.waitForFunction(() => document.getElementById('max-uploads').value === '5');
    await waitFor('rules restored', async () => (await ruleCount(q)) >= 2);
    await q.close();
  });
});
