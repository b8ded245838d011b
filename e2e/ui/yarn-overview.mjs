// The cluster overview of a gateway with a YARN pool, in a real browser:
// run by the YARN suite (workers/yarn/ui_test.go, in TestPySparkOnYARN) against a front-end on
// the bus of a `kernelbus serve` whose yarn worker reports a
// MiniYARNCluster. An administrator signs in with a token, and the YARN
// section must show the ResourceManager's own numbers
// (/ws/v1/cluster/metrics, read here); the kernels page links the
// kernel's application to the RM's page. Screenshots and load times go to
// e2e/ui/artifacts/yarn. Any console error fails the run.
//
// Env: KB_UI_BASE (the front-end, ending in /), KB_UI_TOKEN (an admin's
// API token), KB_YARN_RM (the RM's web address), KB_YARN_APP (the
// application of a running kernel), CHROMIUM (default /usr/bin/chromium).
import { rmSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { Browser, poll } from "./lib.mjs";

const need = (k) => { const v = process.env[k]; if (!v) throw new Error(k + " is not set"); return v; };
const base = need("KB_UI_BASE"), token = need("KB_UI_TOKEN"), rm = need("KB_YARN_RM"), app = need("KB_YARN_APP");
const artifacts = join(dirname(fileURLToPath(import.meta.url)), "artifacts", "yarn");
rmSync(artifacts, { recursive: true, force: true }); // no stale screenshots
const ui = new Browser(artifacts);

// shown is what the YARN section says, in the RM's terms.
async function shown(page) {
  return page.$eval('section[data-rm="yarn"]', (s) => {
    const num = (label) => s.querySelector(`section[aria-label="${label}"] .num`)?.textContent.trim() || "";
    const sub = (label) => s.querySelector(`section[aria-label="${label}"] .muted`)?.textContent.trim() || "";
    const [allocatedMB, totalMB] = num("memory").replace(" MB", "").split(" / ").map(Number);
    const [allocatedVirtualCores, totalVirtualCores] = num("vcores").split(" / ").map(Number);
    const [, pending, containers] = sub("applications").match(/^(\d+) pending, (\d+) containers$/) || [];
    return { allocatedMB, totalMB, allocatedVirtualCores, totalVirtualCores, appsRunning: Number(num("applications")),
      appsPending: Number(pending), containersAllocated: Number(containers), activeNodes: Number(num("nodes")) };
  });
}

async function rmMetrics() {
  const r = await fetch(rm + "/ws/v1/cluster/metrics", { headers: { Accept: "application/json" } });
  if (!r.ok) throw new Error("RM metrics: " + r.status);
  const m = (await r.json()).clusterMetrics;
  const out = {};
  for (const k of ["allocatedMB", "totalMB", "allocatedVirtualCores", "totalVirtualCores", "appsRunning", "appsPending", "containersAllocated", "activeNodes"]) out[k] = m[k];
  return out;
}

let failed = false;
try {
  await ui.launch();
  const page = await ui.newPage("admin");
  await ui.signIn(page, base, { token });
  assert.match(await page.textContent("#me"), /\(admin\)/);
  await page.waitForSelector('section[data-rm="yarn"] section[aria-label="memory"]', { timeout: 60000 });
  // The worker reports every few seconds and the page refreshes every 5 s:
  // wait until the page and the RM agree (a running application, the
  // cluster's capacity), then keep what both said.
  let agreed;
  const t0 = Date.now();
  await poll("the overview to show the RM's metrics", async () => {
    const [p, r] = [await shown(page), await rmMetrics()];
    agreed = { page: p, rm: r };
    return r.appsRunning >= 1 && r.totalMB > 0 && JSON.stringify(p) === JSON.stringify(r);
  }, 90000).catch((e) => { throw new Error(e.message + "; last seen " + JSON.stringify(agreed)); });
  ui.timings["overview to the RM's current metrics"] = Date.now() - t0;
  console.log("YARN metrics, page = RM:", JSON.stringify(agreed.page));
  // Queues: at least the default leaf, with its use.
  await page.waitForSelector('section[data-rm="yarn"] td:text-is("root.default")');
  await ui.shot(page, "overview-yarn");
  // The link to the RM's own pages keeps the keyboard focus across the
  // overview's refresh.
  assert.equal(await page.getAttribute("#rm-web-yarn", "href"), rm + "/cluster");
  await page.focus("#rm-web-yarn");
  const loads = Number(await page.getAttribute("#overview-box", "data-loads"));
  await poll("a refresh of the overview", async () => Number(await page.getAttribute("#overview-box", "data-loads")) > loads, 20000);
  assert.equal(await page.evaluate(() => document.activeElement.id), "rm-web-yarn", "focus kept across the refresh");

  // The kernels page: the kernel's application, linked to the RM's page.
  await ui.visit(page, "#/kernels", "kernels (yarn)");
  const link = await page.waitForSelector(`#kernels-table a:text-is("${app}")`, { timeout: 15000 });
  assert.equal(await link.getAttribute("href"), rm + "/cluster/app/" + app);
  await ui.shot(page, "kernels-yarn");

  // The overview from the keyboard: the page puts the focus on its
  // content, and Tab reaches the link to the RM's pages from there.
  await ui.visit(page, "#/overview", "overview (yarn)");
  await page.waitForSelector("#rm-web-yarn");
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.id), "rm-web-yarn", "Tab from the content's start");
  assert.deepEqual(ui.consoleErrors, [], "console errors");
} catch (e) {
  failed = true;
  console.error("FAIL:", e);
  await ui.failureReport();
} finally {
  await ui.close();
}
console.log(failed ? "yarn overview in the browser: FAILED" : "yarn overview in the browser: ok (screenshots in e2e/ui/artifacts/yarn)");
process.exit(failed ? 1 : 0);
