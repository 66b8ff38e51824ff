// The popup's "Why" section: which recent downloads belong to the active tab's
// site, and the lines shown for each. The words are the brain's (`View.why`,
// wasm/src/why.rs); this only picks and arranges them, so node tests cover it
// with a fixture (extension/test/why.test.mjs).

/** Most downloads listed, so the section stays short at the popup's size. */
export const MAX_WHY = 5;

/**
 * The rows for `site` (an origin; null: every site, each row naming its site).
 * @returns {{title: string, url: string, came: string, lines: string[]}[]}
 */
export function whyRows(view, site) {
  const all = Array.isArray(view?.why) ? view.why : [];
  return all
    .filter((w) => w && (!site || w.site === site))
    .slice(0, MAX_WHY)
    .map((w) => {
      const lines = [`Came ${w.how}.`, `Site's reason: ${w.reason}.`];
      if (w.order?.length) lines.push(`Order: ${w.order.join(' → ')}`);
      if (w.bytes?.length) lines.push(`Bytes: ${w.bytes.join(', ')}`);
      return {
        title: site ? w.file : `${w.file} (${w.site})`,
        url: w.url,
        came: w.came,
        lines,
      };
    });
}

/** The line shown when there is nothing to explain yet. */
export function whyEmpty(site) {
  return site ? 'Nothing downloaded from this site yet.' : 'Nothing downloaded yet.';
}
