// The real wasm brain for node tests, from the built extension
// (scripts/build-extension.sh), so JS modules are tested against the Rust rules
// rather than a copy of them.
import { readFileSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '../..');
const WASM_DIR = join(ROOT, 'dist/chromium/wasm');

let loaded = null;
/** The wasm module's exports (`Brain`, ...), loaded once. */
export async function wasm() {
  if (!loaded) {
    const glue = join(WASM_DIR, 'peercache_wasm.js');
    if (!existsSync(glue)) throw new Error(`${glue} is missing: run scripts/build-extension.sh first`);
    const mod = await import(glue);
    await mod.default({ module_or_path: readFileSync(join(WASM_DIR, 'peercache_wasm_bg.wasm')) });
    loaded = mod;
  }
  return loaded;
}

export const SITE = 'https://s.example';

/** A brain with SITE enrolled (scope /static/), switched on, and a host with a gateway on port 4242. */
export async function connectedBrain() {
  const { Brain } = await wasm();
  const brain = new Brain(undefined);
  brain.set_host_access([`${SITE}/*`]);
  if (!brain.on_advertisement(`${SITE}/`, 'scope="/static/"')) throw new Error('advertisement refused');
  if (!brain.set_site_enabled(SITE, true)) throw new Error('switch refused');
  brain.on_host_message({
    type: 'status', gateway_port: 4242, token: 'tok', peer_addr: '', peer_id: 'p1',
    counters: { bytes_from_peers: 0, bytes_from_server: 0, bytes_served: 0, verification_failures: 0 },
  });
  return brain;
}
