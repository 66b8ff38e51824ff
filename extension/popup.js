// peercache popup: renders the brain's view model and sends the user's switches.
import { whyRows, whyEmpty } from './why.js';
import { siteOf } from './access.js';

const api = globalThis.browser ?? globalThis.chrome;

function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function send(msg) {
  return api.runtime.sendMessage(msg).then(render).catch(() => {});
}

// Asks the browser for one site (its prompt needs the user's click, so this
// runs inside the click), then has the background look for the site's offer.
// A site that answers without one gets its permission back at once; one that
// does not answer keeps it (try again later).
function askForSite(pattern, origin) {
  const result = document.getElementById('add-site-result');
  api.permissions.request({ origins: [pattern] }).then(async (granted) => {
    if (!granted) { result.textContent = `Not allowed: peercache stays off ${origin}.`; return; }
    result.textContent = `Looking for ${origin}'s offer…`;
    const view = await api.runtime.sendMessage({ cmd: 'probe', origin });
    const offer = view?.offer ?? 'unreachable';
    result.dataset.offered = String(offer === 'offered');
    if (offer === 'offered') {
      result.textContent = `${origin} offers delivery through peers: switch it on below.`;
    } else if (offer === 'none') {
      await api.permissions.remove({ origins: [pattern] }).catch(() => {});
      result.textContent = `${origin} does not offer delivery through peers (no peercache header on its front page); its permission was handed back.`;
    } else {
      result.textContent = `${origin} did not answer; try again later.`;
    }
    render(view);
  }).catch((e) => { result.textContent = `The browser refused: ${e?.message ?? e}`; });
}

// The site of the active tab (the page the popup was opened over), if any.
async function activeSite() {
  try {
    const tabs = await api.tabs.query({ active: true, lastFocusedWindow: true });
    const url = tabs.map((t) => t.url).find((u) => u && /^https?:/.test(u));
    return url ? new URL(url).origin : null;
  } catch (_) {
    return null;
  }
}

function ago(secs) {
  return secs < 60 ? `${secs} s ago` : `${Math.round(secs / 60)} min ago`;
}

function renderPeers(peers, site) {
  const shown = site ? peers.filter((p) => p.site === site) : peers;
  document.getElementById('peers-site').textContent = site ? `for ${site}` : '(all sites)';
  document.body.dataset.activeSite = site ?? '';
  const list = document.getElementById('peers');
  list.replaceChildren();
  if (shown.length === 0) {
    const li = document.createElement('li');
    li.className = 'hint';
    li.textContent = 'No peer has sent you anything for this site yet.';
    list.append(li);
    return;
  }
  for (const p of shown) {
    const li = document.createElement('li');
    li.className = 'peer';
    li.dataset.addr = p.addr;
    li.dataset.site = p.site;
    li.textContent = `${p.addr} · ${bytes(p.bytes)} · ${ago(p.idle_secs)}${site ? '' : ` · ${p.site}`}`;
    list.append(li);
  }
}

// Why the active tab's site's recent files came the way they did (wording: the brain's).
function renderWhy(view, site) {
  document.getElementById('why-site').textContent = site ? `for ${site}` : '(all sites)';
  const list = document.getElementById('why');
  list.replaceChildren();
  const rows = whyRows(view, site);
  if (rows.length === 0) {
    const li = document.createElement('li');
    li.className = 'hint';
    li.textContent = whyEmpty(site);
    list.append(li);
    return;
  }
  for (const row of rows) {
    const li = document.createElement('li');
    li.className = 'why';
    li.dataset.came = row.came;
    li.title = row.url;
    const name = document.createElement('strong');
    name.textContent = row.title;
    li.append(name);
    for (const text of row.lines) {
      const line = document.createElement('span');
      line.className = 'why-line';
      line.textContent = text;
      li.append(line);
    }
    list.append(li);
  }
}

// The host's doctor verdicts (the same words `peercache-host doctor` prints):
// problems in full with what to do, what is fine in one short line each.
function renderDoctor(verdicts) {
  const list = document.getElementById('doctor');
  list.replaceChildren();
  for (const v of verdicts) {
    const li = document.createElement('li');
    li.className = `verdict ${v.level}`;
    li.dataset.level = v.level;
    const head = document.createElement('span');
    head.className = 'verdict-head';
    head.textContent = v.level === 'ok' ? `✓ ${v.topic}` : `${v.level === 'fail' ? '✗' : '!'} ${v.topic}: ${v.finding}`;
    if (v.level === 'ok') li.title = v.finding;
    li.append(head);
    if (v.fix) {
      const fix = document.createElement('span');
      fix.className = 'verdict-fix';
      fix.textContent = `What to do: ${v.fix}`;
      li.append(fix);
    }
    list.append(li);
  }
}

async function render(view) {
  if (!view || view.error) return;
  const managed = view.managed ?? {};
  document.getElementById('toggle').checked = view.enabled;
  document.getElementById('toggle').disabled = !!managed.enabled;
  document.getElementById('auto').disabled = !!managed.auto_enable;
  for (const id of ['max-uploads', 'upload-rate', 'cache-max', 'apply-limits']) {
    document.getElementById(id).disabled = !!managed.limits;
  }
  document.body.dataset.managed = String(!!(managed.enabled || managed.auto_enable || managed.limits
    || view.sites.some((s) => s.managed)));
  document.getElementById('toggle-label').textContent = view.enabled ? 'On' : 'Off';
  document.getElementById('auto').checked = view.auto_enable;
  const host = document.getElementById('host');
  host.replaceChildren();
  const status = document.createElement('p');
  if (view.host === 'connected') {
    status.className = 'ok';
    status.id = 'host-status';
    status.dataset.state = 'connected';
    status.textContent = `Native host connected (v${view.host_version ?? '?'}).`;
    host.append(status);
  } else {
    status.className = 'bad';
    status.id = 'host-status';
    status.dataset.state = view.host;
    status.textContent = view.host === 'connecting'
      ? 'Connecting to the native host…'
      : 'The peercache native host is not running, so pages load straight from the sites. Install it with:';
    host.append(status);
    if (view.host !== 'connecting') {
      const cmd = document.createElement('code');
      cmd.textContent = view.install_command;
      host.append(cmd);
      if (view.host_error) {
        const err = document.createElement('p');
        err.className = 'hint';
        err.textContent = `Browser says: ${view.host_error}`;
        host.append(err);
      }
    }
  }
  renderDoctor(view.doctor ?? []);
  const list = document.getElementById('sites');
  list.replaceChildren();
  if (view.sites.length === 0) {
    const li = document.createElement('li');
    li.textContent = 'No site has offered peer delivery yet.';
    list.append(li);
  }
  for (const site of view.sites) {
    const li = document.createElement('li');
    li.className = 'site';
    const label = document.createElement('label');
    const box = document.createElement('input');
    box.type = 'checkbox';
    box.checked = site.enabled;
    box.dataset.origin = site.origin;
    box.className = 'site-switch';
    box.disabled = !!site.managed;
    box.addEventListener('change', () => send({ cmd: 'site', origin: site.origin, on: box.checked }));
    label.append(box, ` ${site.origin}`);
    const scope = document.createElement('span');
    scope.className = 'hint';
    scope.textContent = site.advertised ? site.scope : ' (not reached yet)';
    li.append(label, scope);
    if (!site.access && site.access_pattern) {
      const allow = document.createElement('button');
      allow.type = 'button';
      allow.className = 'site-allow';
      allow.dataset.origin = site.origin;
      allow.textContent = 'Allow access';
      allow.title = 'peercache reaches only the sites you allow; this one is not allowed (yet, or any more).';
      allow.addEventListener('click', () => askForSite(site.access_pattern, site.origin));
      const note = document.createElement('span');
      note.className = 'hint access';
      note.textContent = ' Not allowed in this browser: its files load straight from the site.';
      li.append(note, allow);
    }
    if (site.cookies && site.enabled) {
      const note = document.createElement('span');
      note.className = 'hint cookies';
      note.dataset.origin = site.origin;
      note.textContent = ' This site has set cookies for these files, so they load straight from it (requests with cookies never go through peers).';
      li.append(note);
    }
    if (site.managed) {
      const note = document.createElement('span');
      note.className = 'hint managed';
      note.textContent = ' Switched on by your administrator.';
      li.append(note);
    }
    if (site.enabled && site.loopback && site.loopback !== 'granted' && site.loopback !== 'unsupported') {
      const lna = document.createElement('span');
      lna.className = 'lna';
      lna.dataset.origin = site.origin;
      lna.textContent = 'Images and scripts load from the site until you let it '
        + '"access other apps and services on this device" (site settings → Local network access).';
      lna.title = 'Downloads already go through peers. The browser asks on the site; your administrator can also allow it by policy.';
      li.append(lna);
    }
    list.append(li);
  }
  const c = view.counters;
  document.getElementById('from-peers').textContent = bytes(c.bytes_from_peers);
  document.getElementById('from-server').textContent = bytes(c.bytes_from_server);
  document.getElementById('served').textContent = bytes(c.bytes_served);
  document.getElementById('saved').textContent = bytes(view.bytes_saved ?? 0);
  document.getElementById('failures').textContent = String(c.verification_failures);
  document.body.dataset.rules = String(view.rules);
  const form = document.getElementById('limits');
  if (!form.contains(document.activeElement)) {
    const l = view.user_limits;
    document.getElementById('max-uploads').value = l.max_uploads;
    document.getElementById('upload-rate').value = +(l.upload_rate / 1048576).toFixed(1);
    document.getElementById('cache-max').value = Math.round(l.cache_max / 1048576);
  }
  const hl = view.limits;
  document.getElementById('cache-use').textContent = view.host === 'connected'
    ? `Host: ${bytes(hl.cache_bytes)} cached of ${hl.cache_max ? bytes(hl.cache_max) : 'unlimited'}, ${hl.max_uploads} upload slots`
    : '';
  document.body.dataset.hostCacheMax = String(hl.cache_max);
  const site = await activeSite();
  const input = document.getElementById('add-site-url');
  if (site && !input.value && document.activeElement !== input && !view.sites.some((s) => s.origin === site && s.access)) {
    input.value = site;
  }
  renderPeers(view.peers ?? [], site);
  renderWhy(view, site);
  document.body.dataset.hostMaxUploads = String(hl.max_uploads);
}

document.getElementById('limits').addEventListener('submit', (e) => {
  e.preventDefault();
  send({
    cmd: 'limits',
    max_uploads: Number(document.getElementById('max-uploads').value),
    upload_rate: Number(document.getElementById('upload-rate').value) * 1048576,
    cache_max: Number(document.getElementById('cache-max').value) * 1048576,
  });
  document.activeElement?.blur();
});
document.getElementById('add-site').addEventListener('submit', (e) => {
  e.preventDefault();
  const site = siteOf(document.getElementById('add-site-url').value);
  const result = document.getElementById('add-site-result');
  if (!site) { result.textContent = 'Type a site address, such as https://example.org.'; return; }
  askForSite(site.pattern, site.origin);
});
document.getElementById('toggle').addEventListener('change', (e) => send({ cmd: 'toggle', on: e.target.checked }));
document.getElementById('auto').addEventListener('change', (e) => send({ cmd: 'auto', on: e.target.checked }));
send({ cmd: 'view' });
setInterval(() => send({ cmd: 'view' }), 2000);
