// The web UI in a real browser: playwright-core drives Debian's chromium
// against `kernelbus serve` with a users file (alice: a user with a
// password and a token; root: an administrator). Every page is visited,
// with the keyboard where a person would use it; screenshots and page
// load times go to e2e/ui/artifacts. Any console error fails the run.
//
// Env: KERNELBUS_BIN, KERNELBUS_LAUNCHER_BIN (default <repo>/bin/...),
// KB_VENV (the Python venv with ipykernel; default $KB_CACHE/venv),
// CHROMIUM (default /usr/bin/chromium).
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { tmpdir, homedir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { Browser, poll, freePort, fetchJSON, stopProcess } from "./lib.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, "..", "..");
const cache = process.env.KB_CACHE || join(homedir(), ".cache", "kernelbus");
const kb = process.env.KERNELBUS_BIN || join(repo, "bin", "kernelbus");
const launcher = process.env.KERNELBUS_LAUNCHER_BIN || join(repo, "bin", "kernelbus-launcher");
const venv = process.env.KB_VENV || join(cache, "venv");
const artifacts = join(here, "artifacts");
// No stale screenshots of this test; the YARN suite's own (artifacts/yarn) stay.
mkdirSync(artifacts, { recursive: true });
for (const f of readdirSync(artifacts)) if (/\.(png|json)$/.test(f)) rmSync(join(artifacts, f));
const ui = new Browser(artifacts);

const work = mkdtempSync(join(tmpdir(), "kb-e2e-ui-"));
const usersFile = join(work, "users.json");
const users = (args, input) => execFileSync(kb, ["users", ...args, "--file", usersFile], { input, encoding: "utf8" }).trim();

let serve, base, aliceToken, rootToken, jupyter, jupyterBase, jupyterToken, frontend2;

// Kernel environments: the flag limit every request meets, and alice's
// own (lower) one, set by the administrator in the admin panel.
const envMaxMemoryMB = 4096;
const aliceMemoryMB = 1024;
const envBuildTimeoutMs = 420000; // 55-109 s measured under load; pip downloads besides

// lab calls jupyter_server's REST API, as JupyterLab does.
const lab = (method, path, body) => fetchJSON(method, jupyterBase + path, jupyterToken, body);
const rest = (method, path, token, body) => fetchJSON(method, base + path, token, body);

// spawnLogged starts a process whose output is kept for a failure report.
function spawnLogged(cmd, args, env) {
  const p = spawn(cmd, args, { env, stdio: ["ignore", "pipe", "pipe"] });
  p.log = [];
  p.stdout.on("data", (d) => p.log.push(d));
  p.stderr.on("data", (d) => p.log.push(d));
  return p;
}

// execute runs code in a kernel over jupyter_server's kernel websocket,
// from a browser page on jupyter_server's origin, as JupyterLab does, and
// returns what the kernel printed (stream output) or its error.
async function execute(kernelId, code) {
  const lab = await ui.newPage("jupyterlab");
  // An HTML page of jupyter_server: its API answers carry a CSP of
  // default-src 'none', which forbids the page its own websocket.
  await lab.goto(jupyterBase + "login");
  const url = jupyterBase.replace(/^http/, "ws") + `api/kernels/${kernelId}/channels?token=${jupyterToken}`;
  const out = await lab.evaluate(({ url, code }) => new Promise((resolve, reject) => {
    const session = crypto.randomUUID(), msgId = crypto.randomUUID();
    const ws = new WebSocket(url);
    let text = "";
    const timer = setTimeout(() => { ws.close(); reject(new Error("no idle status within 90 s; output so far: " + text)); }, 90000);
    ws.onerror = () => reject(new Error("websocket error"));
    ws.onopen = () => ws.send(JSON.stringify({
      header: { msg_id: msgId, msg_type: "execute_request", username: "alice", session, version: "5.3", date: new Date().toISOString() },
      parent_header: {}, metadata: {}, channel: "shell", buffers: [],
      content: { code, silent: false, store_history: false, user_expressions: {}, allow_stdin: false, stop_on_error: true },
    }));
    ws.onmessage = (ev) => {
      const m = JSON.parse(ev.data);
      if (!m.parent_header || m.parent_header.msg_id !== msgId) return;
      const t = m.header.msg_type;
      if (t === "stream") text += m.content.text;
      if (t === "error") text += m.content.ename + ": " + m.content.evalue;
      if (t === "status" && m.content.execution_state === "idle") { clearTimeout(timer); ws.close(); resolve(text); }
    };
  }), { url, code });
  await ui.closePage(lab);
  return out;
}

// environments drives the kernel environments page as alice: refusals
// (a package that does not exist, resources over the limits), then a
// real build from PyPI whose kernel imports the package, and a second
// front-end on the same bus that lists the new kernelspec.
async function environments(page) {
  await ui.visit(page, "#/environments", "environments");
  await page.waitForSelector("#env-form", { timeout: 15000 });
  // Every field of the form has a label (its accessible name).
  const unlabelled = await page.$$eval("#env-form input, #env-form select, #env-form textarea",
    (els) => els.filter((e) => !e.labels || e.labels.length === 0).map((e) => e.id));
  assert.deepEqual(unlabelled, [], "form fields without a label");
  await ui.shot(page, "environments");
  const submitByKeyboard = async () => { await page.focus("#env-name"); await page.keyboard.press("Enter"); };

  // A package that does not exist: refused before any build, pip's
  // reason naming it, shown on the page.
  await page.focus("#env-name");
  await page.keyboard.type("uibad");
  await page.fill("#env-requirements", "kb-no-such-package-4711");
  ui.allowFailedLoad = "/api/environments";
  let t0 = Date.now();
  await submitByKeyboard();
  await page.waitForSelector("#view p[role=alert]:has-text('kb-no-such-package-4711')", { timeout: 180000 });
  ui.timings["environment refused: missing package (pip resolver)"] = Date.now() - t0;
  await ui.shot(page, "env-refused-package");

  // Over the gateway's limit: the form says so before sending (the
  // field's max, its placeholder and the browser's validation message)
  // and the REST API refuses it, naming the field and the limit.
  await page.fill("#env-requirements", "tabulate");
  await page.fill("#env-memory_mb", String(envMaxMemoryMB * 4));
  assert.equal(await page.getAttribute("#env-memory_mb", "placeholder"), `at most ${envMaxMemoryMB}`);
  assert.match(await page.$eval("#env-memory_mb", (e) => e.validationMessage), new RegExp(String(envMaxMemoryMB)));
  const over = await rest("POST", "api/environments", aliceToken,
    { name: "uibig", python: await page.inputValue("#env-python"), requirements: "tabulate", resources: { memory_mb: envMaxMemoryMB * 4 } });
  assert.equal(over.status, 400, JSON.stringify(over.body));
  assert.match(over.body.message, new RegExp(`resources\\.memory_mb: ${envMaxMemoryMB * 4} is above the limit of ${envMaxMemoryMB} MB`));
  // Over alice's own limit (the admin set driver_memory_mb): refused
  // by the server, the page naming the limit.
  await page.fill("#env-memory_mb", String(aliceMemoryMB * 2));
  await submitByKeyboard();
  await page.waitForSelector(`#view p[role=alert]:has-text('driver_memory_mb'):has-text('${aliceMemoryMB}')`, { timeout: 60000 });
  ui.allowFailedLoad = null;
  await ui.shot(page, "env-refused-limit");

  // A real build: tabulate from PyPI, progress and log on the page.
  await page.fill("#env-memory_mb", "");
  await page.fill("#env-name", "uitab");
  await page.fill("#env-display", "Tabulate (UI test)");
  t0 = Date.now();
  await submitByKeyboard();
  // Accepted: the page follows the build (its progress bar and log).
  await page.waitForSelector("#env-progress:not([hidden])", { timeout: 180000 });
  ui.timings["environment accepted (validated, resolved)"] = Date.now() - t0;
  await poll("build log lines on the page", async () => (await page.textContent("#env-log")).trim().length > 0, 120000);
  await ui.shot(page, "env-building");
  const done = await page.waitForSelector("#view p[role=status]:has-text('Environment uitab: ready.'), #view p[role=status]:has-text('Environment uitab: failed.')",
    { timeout: envBuildTimeoutMs });
  ui.timings["environment build to ready (tabulate)"] = Date.now() - t0;
  await ui.shot(page, "env-ready");
  assert.match(await done.textContent(), /ready/, "build failed; log:\n" + (await page.textContent("#env-log")));
  assert.ok(await page.$eval("#env-progress", (e) => e.value) > 0, "the progress bar moved");
  // The list links the new kernelspec; its details open from the keyboard.
  await page.waitForSelector('#env-list a[href="#/specs/uitab"]', { timeout: 15000 });
  await page.focus('#env-list a[href="#/specs/uitab"]');
  await page.keyboard.press("Enter");
  await page.waitForSelector('#view[data-ready="#/specs/uitab"]');
  await page.waitForSelector("#spec-record");
  assert.match(await page.textContent("#spec-record"), /Tabulate \(UI test\)/);
  await ui.shot(page, "kernelspec-uitab");

  // JupyterLab's side sees the spec and starts a kernel from it, which
  // imports the package.
  const specs = await lab("GET", "api/kernelspecs");
  assert.ok(specs.body.kernelspecs.uitab, "jupyter_server lists uitab: " + Object.keys(specs.body.kernelspecs));
  t0 = Date.now();
  const k = await lab("POST", "api/kernels", { name: "uitab" });
  assert.equal(k.status, 201, JSON.stringify(k.body));
  const out = await execute(k.body.id, "import sys, tabulate\nprint(sys.prefix)\nprint(tabulate.tabulate([['kernelbus', 16]], headers=['project', 'issue']))");
  ui.timings["kernel from the new spec: start + import"] = Date.now() - t0;
  assert.match(out, /project\s+issue/, out);
  assert.match(out, /kernelbus\s+16/, out);
  assert.doesNotMatch(out, new RegExp(venv.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")), "the kernel runs in the environment, not the test's venv");
  assert.equal((await lab("DELETE", "api/kernels/" + k.body.id)).status, 204);

  // A second front-end on the same bus, with the frontend role's
  // credentials from serve's data folder, lists the new spec.
  const port2 = await freePort();
  const base2 = `http://127.0.0.1:${port2}/`;
  frontend2 = spawnLogged(kb, ["frontend", "--nats-conn", join(work, "data", "nats.conn"), "--listen", `127.0.0.1:${port2}`,
    "--users-file", usersFile, "--log-level", "info"], process.env);
  await poll("the second front-end to be ready", async () => (await fetch(base2 + "readyz")).ok, 60000);
  const r2 = await fetch(base2 + "api/kernelspecs", { headers: { Authorization: "token " + aliceToken } });
  assert.equal(r2.status, 200);
  const specs2 = await r2.json();
  assert.ok(specs2.kernelspecs.uitab, "the second front-end lists uitab: " + Object.keys(specs2.kernelspecs));
  assert.equal(specs2.kernelspecs.uitab.spec.display_name, "Tabulate (UI test)");
  // ... and shows it in its UI (the session cookie of the first one
  // would do too, the signing key being on the bus; sign in afresh).
  const page2 = await ui.newPage("alice-frontend2");
  await ui.signIn(page2, base2, { user: "alice", password: "alice-password" });
  await ui.visit(page2, "#/specs", "kernelspecs (second front-end)");
  await page2.waitForSelector('a[href="#/specs/uitab"]', { timeout: 15000 });
  await ui.shot(page2, "kernelspecs-frontend2");

  // Deleting the environment (confirmed) removes its spec everywhere.
  await ui.visit(page, "#/environments", "environments (again)");
  await page.click('button[aria-label="Delete environment uitab"]');
  await poll("uitab to leave the second front-end's kernelspecs", async () => {
    const r = await fetch(base2 + "api/kernelspecs", { headers: { Authorization: "token " + aliceToken } });
    return !(await r.json()).kernelspecs.uitab;
  }, 30000);
  await page.waitForSelector("#env-list :text('No environments yet.')", { timeout: 15000 });
}

async function main() {
  // Users: alice (user: token and password), root (admin: token).
  aliceToken = users(["add", "--role", "user", "alice"]);
  users(["passwd", "alice"], "alice-password\n");
  rootToken = users(["add", "--role", "admin", "--role", "user", "root"]);

  mkdirSync(join(work, "build"));
  const port = await freePort();
  base = `http://127.0.0.1:${port}/`;
  const env = { ...process.env, PATH: join(venv, "bin") + ":" + process.env.PATH, IPYTHONDIR: join(work, "ipython") };
  serve = spawnLogged(kb, ["serve", "--listen", `127.0.0.1:${port}`, "--data-dir", join(work, "data"),
    "--users-file", usersFile, "--kernelspec-dir", join(venv, "share", "jupyter", "kernels"),
    "--launcher", launcher, "--log-level", "info", "--stop-kernels-on-exit",
    // A build worker runs in serve (--build-worker, on by default) with
    // the venv's python3 (first on PATH) as the offered Python.
    "--build-dir", join(work, "build"), "--env-max-memory-mb", String(envMaxMemoryMB)], env);
  await poll("kernelbus serve to be ready", async () => (await fetch(base + "readyz")).ok);

  // JupyterLab's side: a real jupyter_server in gateway mode, signed in
  // to the gateway as alice.
  const jport = await freePort();
  jupyterToken = "jt-" + Date.now();
  const jenv = { ...env, JUPYTER_GATEWAY_AUTH_TOKEN: aliceToken, JUPYTER_CONFIG_DIR: join(work, "jcfg"),
    JUPYTER_DATA_DIR: join(work, "jdata"), JUPYTER_RUNTIME_DIR: join(work, "jrun"), JUPYTER_PLATFORM_DIRS: "1" };
  for (const k of Object.keys(jenv)) if (k.startsWith("KERNEL_")) delete jenv[k];
  mkdirSync(join(work, "root"), { recursive: true });
  jupyter = spawnLogged(join(venv, "bin", "python"), ["-m", "jupyter_server", "--no-browser", "--allow-root",
    "--ServerApp.ip=127.0.0.1", `--ServerApp.port=${jport}`, "--ServerApp.port_retries=0",
    `--IdentityProvider.token=${jupyterToken}`, `--ServerApp.root_dir=${join(work, "root")}`, `--gateway-url=${base}`],
  jenv);
  jupyterBase = `http://127.0.0.1:${jport}/`;
  await poll("jupyter_server to be ready", async () => (await fetch(jupyterBase + "api/status?token=" + jupyterToken)).ok, 90000);

  await ui.launch();

  // --- alice, a user -------------------------------------------------------
  const page = await ui.newPage("alice");
  await ui.signIn(page, base, { user: "alice", password: "alice-password" });
  assert.equal(await page.textContent("#me"), "alice");
  assert.equal(await page.isVisible("#nav-admin"), false, "a user sees no Admin link");
  await page.waitForSelector('section[data-rm="local"] td', { timeout: 30000 }); // the local pool's worker
  // A cold load of a page, signed in: HTML, CSS, script and its API calls.
  for (let i = 1; i <= 3; i++) {
    const c0 = Date.now();
    await page.reload();
    await page.waitForSelector('#view[data-ready="#/overview"]');
    ui.timings[`overview reload to data shown #${i}`] = Date.now() - c0;
    ui.timings[`overview reload DOMContentLoaded #${i} (navigation timing)`] = Math.round(await page.evaluate(() => performance.getEntriesByType("navigation")[0].domContentLoadedEventEnd));
  }
  // The UI's weight: the bodies of the page, its CSS and its script.
  ui.timings["UI weight: bytes of index.html + app.css + app.js (not a time)"] = await page.evaluate(() =>
    [...performance.getEntriesByType("navigation"), ...performance.getEntriesByType("resource")]
      .filter((e) => /\/ui\/[^?]*$/.test(new URL(e.name).pathname)).reduce((n, e) => n + e.encodedBodySize, 0));
  await ui.shot(page, "overview-user");

  // A kernel started from JupyterLab's side appears in the table ...
  const started = await lab("POST", "api/kernels", { name: "python3" });
  assert.equal(started.status, 201, JSON.stringify(started.body));
  const kid = started.body.id;
  await ui.visit(page, "#/kernels", "kernels");
  await page.waitForSelector(`#kernels-table a[href="#/kernels/${kid}"]`, { timeout: 15000 });
  await ui.shot(page, "kernels");
  // ... search narrows the table ...
  await page.fill("#kernel-search", "no-such-kernel");
  await page.waitForSelector("#kernels-table", { state: "detached" });
  await page.fill("#kernel-search", kid.slice(0, 8));
  await page.waitForSelector(`#kernels-table a[href="#/kernels/${kid}"]`);
  // ... and its details open from the keyboard, with the timeline.
  await page.focus(`#kernels-table a[href="#/kernels/${kid}"]`);
  const t0 = Date.now();
  await page.keyboard.press("Enter");
  await page.waitForSelector(`#view[data-ready="#/kernels/${kid}"]`);
  await page.waitForSelector('#timeline li[data-type="started"]', { timeout: 15000 });
  ui.timings["kernel details + timeline"] = Date.now() - t0;
  const rec = await page.textContent("#kernel-record");
  assert.match(rec, /owneralice/);
  assert.match(rec, /resource managerlocal/);
  assert.doesNotMatch(rec, /object HTMLElement/);
  await page.waitForSelector("#timeline-status:text('live')", { timeout: 15000 });
  await ui.shot(page, "kernel-timeline");
  // Shut down from JupyterLab's side: the live timeline shows it, and
  // the kernel leaves the table.
  const del = await lab("DELETE", "api/kernels/" + kid);
  assert.equal(del.status, 204);
  await page.waitForSelector('#timeline li[data-type="shutdown_requested"], #timeline li[data-type="terminated"]', { timeout: 15000 });
  await ui.shot(page, "kernel-timeline-ended");
  await ui.visit(page, "#/kernels", "kernels (again)");
  await poll("the kernel to leave the table", async () => (await page.$(`a[href="#/kernels/${kid}"]`)) === null, 15000);

  // Start from the page, then shut down with the button (confirmed).
  await page.selectOption("#start-spec", "python3");
  await page.click("#start-kernel");
  const msg = await page.waitForSelector("p[role=status]:has-text('started')", { timeout: 60000 });
  const uiKid = (await msg.textContent()).match(/Kernel (\S+) started/)[1];
  await page.waitForSelector(`#act-shut-down-${uiKid}`);
  // The table refreshes every 3 s; the focus must survive it.
  await page.focus(`#act-shut-down-${uiKid}`);
  const loads = Number(await page.getAttribute("#kernels-box", "data-loads"));
  await poll("a refresh of the table", async () => Number(await page.getAttribute("#kernels-box", "data-loads")) > loads, 15000);
  assert.equal(await page.evaluate(() => document.activeElement.id), `act-shut-down-${uiKid}`, "focus kept across refresh");
  await page.keyboard.press("Enter");
  await poll("the UI-started kernel to leave the table", async () => (await page.$(`a[href="#/kernels/${uiKid}"]`)) === null, 30000);

  await ui.visit(page, "#/specs", "kernelspecs");
  await ui.shot(page, "kernelspecs");
  await page.click('a[href="#/specs/python3"]');
  await page.waitForSelector('#view[data-ready="#/specs/python3"]');
  await page.waitForSelector("#spec-record");
  assert.match(await page.textContent("#spec-record"), /languagepython/);
  await ui.shot(page, "kernelspec-python3");
  await ui.visit(page, "#/overview", "overview");
  await page.keyboard.press("Tab"); // the skip link comes first
  assert.equal(await page.evaluate(() => document.activeElement.className), "skip");

  // --- root, an administrator ----------------------------------------------
  const adminPage = await ui.newPage("root");
  await ui.signIn(adminPage, base, { token: rootToken });
  assert.equal(await adminPage.isVisible("#nav-admin"), true);
  await ui.shot(adminPage, "overview-admin");
  await ui.visit(adminPage, "#/admin", "admin");
  await adminPage.fill("#user-limits-user", "alice");
  await adminPage.fill("#user-limits-max_kernels", "1");
  await adminPage.fill("#user-limits-driver_memory_mb", String(aliceMemoryMB)); // environments below
  await adminPage.focus("#user-limits-max_kernels");
  await adminPage.keyboard.press("Enter"); // submits the form
  await adminPage.waitForSelector("#view td:text-is('alice')", { timeout: 15000 });
  await ui.shot(adminPage, "admin-limits");

  // alice has her one kernel; the next start is refused, by REST and in the page.
  const one = await rest("POST", "api/kernels", aliceToken, { name: "python3" });
  assert.equal(one.status, 201, JSON.stringify(one.body));
  const two = await rest("POST", "api/kernels", aliceToken, { name: "python3" });
  assert.equal(two.status, 403);
  assert.match(two.body.message, /max_kernels/);
  await ui.visit(page, "#/kernels", "kernels (limited)");
  ui.allowFailedLoad = "/api/kernels";
  await page.click("#start-kernel");
  await page.waitForSelector("#view p[role=alert]:has-text('max_kernels')", { timeout: 15000 });
  ui.allowFailedLoad = null;
  await ui.shot(page, "start-refused");
  // Interrupt from the table, confirmed (the dialog handler accepts).
  await page.click(`#act-interrupt-${one.body.id}`);
  await page.waitForSelector(`p[role=status]:has-text('Interrupt: done for ${one.body.id}')`, { timeout: 15000 });
  // A user cannot reach the admin API from the page either.
  ui.allowFailedLoad = "/api/admin/limits";
  const forbidden = await page.evaluate(async () => (await fetch("../api/admin/limits")).status);
  assert.equal(forbidden, 403);
  ui.allowFailedLoad = null;
  assert.equal((await rest("DELETE", "api/kernels/" + one.body.id, aliceToken)).status, 204);

  await environments(page);

  // Sign out ends the session.
  await page.click("#logout");
  await page.waitForURL(/login\.html$/);
  ui.allowFailedLoad = "/api/me";
  assert.equal(await page.evaluate(async () => (await fetch("../api/me")).status), 401);
  ui.allowFailedLoad = null;

  assert.deepEqual(ui.consoleErrors, [], "console errors");
}

let failed = false;
try {
  await main();
} catch (e) {
  failed = true;
  console.error("FAIL:", e);
  if (serve && serve.log) console.error("--- kernelbus serve log tail ---\n" + Buffer.concat(serve.log).toString().split("\n").slice(-40).join("\n"));
  await ui.failureReport();
} finally {
  await ui.close();
  if (jupyter) {
    if (failed) console.error("--- jupyter_server log tail ---\n" + Buffer.concat(jupyter.log).toString().split("\n").slice(-20).join("\n"));
    await stopProcess(jupyter, "jupyter_server");
  }
  if (frontend2) {
    if (failed) console.error("--- second front-end log tail ---\n" + Buffer.concat(frontend2.log).toString().split("\n").slice(-20).join("\n"));
    await stopProcess(frontend2, "the second front-end");
  }
  await stopProcess(serve, "kernelbus serve");
  rmSync(work, { recursive: true, force: true });
}
console.log(failed ? "e2e ui: FAILED" : "e2e ui: ok (screenshots in e2e/ui/artifacts)");
process.exit(failed ? 1 : 0);
