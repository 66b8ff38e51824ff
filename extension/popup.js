// peercache popup: renders the brain's view model and sends the user's switches.
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

function render(view) {
  if (!view || view.error) return;
  document.getElementById('toggle').checked = view.enabled;
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
  const list = document.getElementById('sites');
  list.replaceChildren();
  if (view.sites.length === 0) {
    const li = document.createElement('li');
    li.textContent = 'No site has offered peer delivery yet.';
    list.append(li);
  }
  for (const site of view.sites) {
    const li = document.createElement('li');
    const label = document.createElement('label');
    const box = document.createElement('input');
    box.type = 'checkbox';
    box.checked = site.enabled;
    box.dataset.origin = site.origin;
    box.className = 'site-switch';
    box.addEventListener('change', () => send({ cmd: 'site', origin: site.origin, on: box.checked }));
    label.append(box, ` ${site.origin}`);
    const scope = document.createElement('span');
    scope.className = 'hint';
    scope.textContent = site.scope;
    li.append(label, scope);
    list.append(li);
  }
  const c = view.counters;
  document.getElementById('from-peers').textContent = bytes(c.bytes_from_peers);
  document.getElementById('from-server').textContent = bytes(c.bytes_from_server);
  document.getElementById('served').textContent = bytes(c.bytes_served);
  document.getElementById('failures').textContent = String(c.verification_failures);
  document.body.dataset.rules = String(view.rules);
}

document.getElementById('toggle').addEventListener('change', (e) => send({ cmd: 'toggle', on: e.target.checked }));
document.getElementById('auto').addEventListener('change', (e) => send({ cmd: 'auto', on: e.target.checked }));
send({ cmd: 'view' });
setInterval(() => send({ cmd: 'view' }), 2000);
