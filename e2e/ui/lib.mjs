// What the browser tests share (ui.test.mjs, against `kernelbus serve`;
// yarn-overview.mjs, run by the YARN suite): polling, free ports, and a
// browser whose pages record console errors, load times and screenshots.
import { createServer } from "node:net";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

export async function poll(what, fn, timeoutMs = 60000) {
  const end = Date.now() + timeoutMs;
  let last;
  while (Date.now() < end) {
    try { const v = await fn(); if (v) return v; } catch (e) { last = e; }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for ${what}${last ? ": " + last.message : ""}`);
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => resolve(p)); });
    s.on("error", reject);
  });
}

// fetchJSON calls a gateway's REST API with an API token.
export async function fetchJSON(method, url, token, body) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = "token " + token;
  const r = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}

// Browser is headless chromium (Debian's, or $CHROMIUM) with the pages a
// test opened. Any console error or uncaught exception on a page is kept
// in consoleErrors, except a failed load of a URL containing
// allowFailedLoad (a refusal the test provokes).
export class Browser {
  constructor(artifacts) {
    this.artifacts = artifacts;
    mkdirSync(artifacts, { recursive: true });
    this.timings = {};
    this.consoleErrors = [];
    this.allowFailedLoad = null;
    this.pages = [];
  }

  async launch() {
    this.browser = await chromium.launch({
      executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
      args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    });
  }

  async newPage(name) {
    const ctx = await this.browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await ctx.newPage();
    page.on("console", (m) => {
      if (m.type() !== "error") return;
      const url = (m.location() && m.location().url) || "";
      if (this.allowFailedLoad && m.text().startsWith("Failed to load resource") && url.includes(this.allowFailedLoad)) return;
      this.consoleErrors.push(`${name}: ${m.text()} (${url})`);
    });
    page.on("pageerror", (e) => this.consoleErrors.push(`${name}: uncaught ${e.message}`));
    page.on("dialog", (d) => d.accept()); // the confirmations of actions
    this.pages.push([name, page]);
    return page;
  }

  async closePage(page) {
    this.pages.splice(this.pages.findIndex(([, p]) => p === page), 1);
    await page.context().close();
  }

  // visit opens a hash route and waits until the page says it is ready,
  // recording how long that took.
  async visit(page, hash, label) {
    const t0 = Date.now();
    await page.evaluate((h) => { location.hash = h; }, hash);
    await page.waitForSelector(`#view[data-ready="${hash}"]`, { timeout: 30000 });
    this.timings[label] = Date.now() - t0;
  }

  async shot(page, name) {
    await page.screenshot({ path: join(this.artifacts, name + ".png"), fullPage: true });
  }

  // signIn signs in at the gateway base with the keyboard only: a token
  // ({token}) or a user name and password ({user, password}).
  async signIn(page, base, how) {
    const t0 = Date.now();
    await page.goto(base + "ui/login.html");
    if (how.token) { // the token field has the focus
      await page.keyboard.type(how.token);
      await page.keyboard.press("Enter");
    } else {
      await page.keyboard.press("Tab");
      await page.keyboard.type(how.user);
      await page.keyboard.press("Tab");
      await page.keyboard.type(how.password);
      await page.keyboard.press("Enter");
    }
    await page.waitForSelector('#view[data-ready="#/overview"]', { timeout: 30000 });
    this.timings[`sign-in to overview (${how.user || "token"})`] = Date.now() - t0;
  }

  // failureReport keeps a screenshot and the text of every open page.
  async failureReport() {
    if (this.consoleErrors.length) console.error("console errors:", this.consoleErrors);
    for (const [name, p] of this.pages) {
      await p.screenshot({ path: join(this.artifacts, "failure-" + name + ".png"), fullPage: true }).catch(() => {});
      console.error(`--- ${name} at ${p.url()} ---\n` + (await p.evaluate(() => document.getElementById("view")?.innerText || document.body.innerText).catch(() => "")));
    }
  }

  // close writes the load times and ends the browser.
  async close(timingsFile = "timings.json") {
    writeFileSync(join(this.artifacts, timingsFile), JSON.stringify(this.timings, null, 2) + "\n");
    console.log("page load times (ms):", this.timings);
    if (this.browser) await this.browser.close().catch(() => {});
  }
}

// stopProcess ends a child process: SIGTERM, then SIGKILL after 20 s.
export async function stopProcess(p, what) {
  if (!p || p.exitCode !== null || p.signalCode !== null) return;
  p.kill("SIGTERM");
  await poll(what + " to exit", () => p.exitCode !== null || p.signalCode !== null, 20000).catch(() => p.kill("SIGKILL"));
}
