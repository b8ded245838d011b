// kernelbus web UI: one page, routes in the hash (#/kernels/<id>), every
// datum from the documented REST API. Pages build their DOM with h(), which
// sets text, never HTML, so nothing a kernel or user wrote can run here.
"use strict";

const base = location.pathname.replace(/ui\/[^/]*$/, ""); // the gateway's base URL
let me = null;      // GET /api/me
let cleanup = [];   // what the current page must stop when another opens

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids.flat(Infinity)) {
    if (k === null || k === undefined || k === false) continue;
    el.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return el;
}

class APIError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const headers = {};
  if (me && me.csrf) headers["X-KB-CSRF"] = me.csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(base + path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 401) {
    location.replace(base + "ui/login.html");
    throw new APIError(401, "not signed in");
  }
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (!r.ok) throw new APIError(r.status, (data && data.message) || r.statusText);
  return data;
}

const view = () => document.getElementById("view");
const fmtTime = (t) => (t ? new Date(t).toLocaleString() : "");
const ago = (t) => {
  if (!t) return "";
  const s = Math.round((Date.now() - new Date(t)) / 1000);
  return s < 60 ? s + " s ago" : s < 3600 ? Math.round(s / 60) + " min ago" : Math.round(s / 3600) + " h ago";
};
const alertBox = () => h("p", { role: "alert", class: "error" });

function every(ms, fn) {
  const t = setInterval(fn, ms);
  cleanup.push(() => clearInterval(t));
}

// refresh replaces what box shows with what make returns, keeping the
// keyboard focus on the element of the same id if it had it, and counts
// the refreshes in box.dataset.loads (for tests that wait for one).
function refresh(box, ...kids) {
  const focused = box.contains(document.activeElement) ? document.activeElement.id : "";
  box.replaceChildren(...kids);
  if (focused) document.getElementById(focused)?.focus();
  box.dataset.loads = String(Number(box.dataset.loads || 0) + 1);
}

function table(cols, rows, empty) {
  if (!rows.length) return h("p", { class: "muted", text: empty });
  return h("table", {},
    h("thead", {}, h("tr", {}, cols.map((c) => h("th", { scope: "col", text: c })))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c))))));
}

// ---- overview -------------------------------------------------------------

async function overview(root) {
  root.append(h("h1", { text: "Cluster overview" }));
  const box = h("div", { id: "overview-box" });
  root.append(box);
  const load = async () => {
    const c = await api("GET", "api/cluster");
    const states = Object.entries(c.kernels_by_state).sort();
    const total = states.reduce((n, [, v]) => n + v, 0);
    const rms = Object.entries(c.resource_managers).sort();
    refresh(box,
      h("div", { class: "cards" },
        h("section", { class: "card", "aria-label": "Kernels" }, h("h3", { text: "Kernels" }),
          h("div", { class: "num", id: "kernel-total", text: total }),
          h("div", { class: "muted", text: states.map(([k, v]) => k + ": " + v).join(", ") || "none" })),
        h("section", { class: "card", "aria-label": "Last hour" }, h("h3", { text: "Last hour" }),
          h("div", {}, h("span", { class: "num", id: "starts-hour", text: c.last_hour.starts }), " starts"),
          h("div", {}, h("span", { class: c.last_hour.failures ? "num error" : "num", text: c.last_hour.failures }), " failures"))),
      h("h2", { text: "Resource managers" }),
      h("div", {}, rms.length ? rms.map(([name, rm]) => h("section", { class: "rm", "data-rm": name, "aria-label": name },
        h("h3", { text: name + " — " + rm.workers.length + " worker(s), " +
          Object.values(rm.kernels).reduce((a, b) => a + b, 0) + " kernel(s)" }),
        table(["worker", "host", "CPUs", "load (1 min)", "memory available / total", "last seen"],
          rm.workers.map((w) => [w.id, w.host || "", w.cpus ?? "", w.load1 ?? "",
            w.mem_total_mb ? (w.mem_available_mb + " / " + w.mem_total_mb + " MB") : "", ago(w.seen)]),
          "No live worker of this resource manager."),
        h("p", { class: "muted", text: "kernels: " + (Object.entries(rm.kernels).map(([k, v]) => k + " " + v).join(", ") || "none") }),
        rmReport(name, rm),
      )) : h("p", { class: "muted", text: "No worker is live and no kernel is known." })),
    );
  };
  await load();
  every(5000, () => load().catch(() => {}));
}

// rmReport shows what a worker reported of its resource manager (YARN:
// cluster metrics and queues).
function rmReport(name, rm) {
  const w = rm.workers.find((w) => w.cluster);
  const err = rm.workers.find((w) => w.cluster_error);
  if (!w) return err ? h("p", { class: "error", text: "the resource manager did not answer: " + err.cluster_error }) : null;
  const c = w.cluster, m = c.metrics || {};
  if (c.hosts) { // ssh: the pool's hosts and their health
    return table(["host", "kernels", "health"], c.hosts.map((x) => [x.host, (rm.kernels_per_host || {})[x.host] || 0,
      x.healthy ? h("span", { class: "ok", text: "healthy" }) : h("span", { class: "error", text: "unhealthy: " + x.reason })]), "No hosts configured.");
  }
  if (c.nodes || c.kernel_pods) { // kubernetes: nodes and kernel pods
    return h("div", { class: "rm-report" },
      c.nodes ? table(["node", "ready", "allocatable CPU", "allocatable memory", "GPUs", "kernel pods", "kernel CPU requested", "kernel memory requested"],
        c.nodes.map((n) => [n.name, n.ready ? "yes" : "no", n.allocatable_cpu, n.allocatable_memory, n.allocatable_gpus || "",
          n.kernel_pods, n.kernel_cpu_requested_milli + " m", n.kernel_memory_requested_mb + " MB"]), "No nodes.")
        : h("p", { class: "muted", text: "nodes: " + (c.nodes_error || "not readable") }),
      table(["namespace", "kernel pods by phase"], Object.entries(c.kernel_pods || {}).sort().map(([ns, ph]) =>
        [ns, Object.entries(ph).map(([p, n]) => p + " " + n).join(", ")]), "No kernel pods."));
  }
  return h("div", { class: "rm-report" },
    h("div", { class: "cards" },
      h("section", { class: "card", "aria-label": "memory" }, h("h3", { text: "Memory" }),
        h("div", { class: "num", text: (m.allocatedMB ?? 0) + " / " + (m.totalMB ?? 0) + " MB" })),
      h("section", { class: "card", "aria-label": "vcores" }, h("h3", { text: "vCores" }),
        h("div", { class: "num", text: (m.allocatedVirtualCores ?? 0) + " / " + (m.totalVirtualCores ?? 0) })),
      h("section", { class: "card", "aria-label": "applications" }, h("h3", { text: "Applications" }),
        h("div", { class: "num", id: "yarn-apps", text: m.appsRunning ?? 0 }),
        h("div", { class: "muted", text: (m.appsPending ?? 0) + " pending, " + (m.containersAllocated ?? 0) + " containers" })),
      h("section", { class: "card", "aria-label": "nodes" }, h("h3", { text: "Nodes" }),
        h("div", { class: "num", id: "yarn-nodes", text: m.activeNodes ?? 0 }),
        h("div", { class: "muted", text: (m.unhealthyNodes ?? 0) + " unhealthy, " + (m.lostNodes ?? 0) + " lost" }))),
    c.queues ? table(["queue (" + (c.scheduler || "") + ")", "state", "used MB", "used vCores", "max", "active apps"],
      c.queues.map((q) => [q.path, q.state || "", q.used_mb, q.used_vcores,
        q.max_mb ? q.max_mb + " MB" : q.abs_max_capacity ? q.abs_max_capacity + " %" : "", q.active_apps]), "No queues.") : null,
    c.web && /^https?:\/\//.test(c.web) ? h("p", {}, h("a", { href: c.web + "/cluster", id: "rm-web-" + name, rel: "noopener", text: "ResourceManager" })) : null);
}

// ---- kernels ------------------------------------------------------------------

async function kernels(root) {
  const err = alertBox(), msg = h("p", { role: "status", class: "ok" });
  const q = h("input", { id: "kernel-search", type: "search", placeholder: "id, owner, spec, host" });
  const st = h("select", { id: "kernel-state" }, ["", "requested", "claimed", "submitted", "running", "restarting", "dead", "failed", "terminated"]
    .map((s) => h("option", { value: s, text: s || "any" })));
  const spec = h("select", { id: "start-spec" });
  const startBtn = h("button", { type: "submit", id: "start-kernel", text: "Start kernel" });
  const box = h("div", { id: "kernels-box" });
  root.append(h("h1", { text: "Kernels" }),
    h("form", { class: "toolbar", id: "start-form", onsubmit: async (ev) => {
      ev.preventDefault();
      err.textContent = ""; msg.textContent = "";
      startBtn.disabled = true;
      try {
        const k = await api("POST", "api/kernels", { name: spec.value });
        msg.textContent = "Kernel " + k.id + " started.";
        await load();
      } catch (e) { err.textContent = e.message; } finally { startBtn.disabled = false; }
    } }, h("label", { for: "start-spec" }, "Kernelspec", spec), startBtn),
    h("div", { class: "toolbar", role: "search" },
      h("label", { for: "kernel-search" }, "Search", q), h("label", { for: "kernel-state" }, "State", st)),
    err, msg, box);
  const specs = await api("GET", "api/kernelspecs");
  try {
    const cl = await api("GET", "api/cluster");
    for (const [name, rm] of Object.entries(cl.resource_managers)) {
      const w = rm.workers.find((w) => w.cluster && w.cluster.web);
      if (w) rmWeb[name] = w.cluster.web;
    }
  } catch { /* links to the resource manager are a nicety */ }
  spec.replaceChildren(...Object.keys(specs.kernelspecs).sort().map((n) =>
    h("option", { value: n, selected: n === specs.default, text: specs.kernelspecs[n].spec.display_name + " (" + n + ")" })));

  const act = async (k, what) => {
    if (!confirm(what + " kernel " + k.id + " (" + k.name + ")?")) return;
    err.textContent = ""; msg.textContent = "";
    try {
      if (what === "Shut down") await api("DELETE", "api/kernels/" + k.id);
      else await api("POST", "api/kernels/" + k.id + "/" + what.toLowerCase());
      msg.textContent = what + ": done for " + k.id + ".";
    } catch (e) { err.textContent = e.message; }
    await load();
  };
  const load = async () => {
    const params = new URLSearchParams();
    if (q.value.trim()) params.set("q", q.value.trim());
    if (st.value) params.set("state", st.value);
    const ks = await api("GET", "api/kernel-records?" + params);
    const live = (k) => !["dead", "failed", "terminated"].includes(k.state);
    const t = table(
      ["kernel", "owner", "spec", "RM", "where", "state", "conns", "started", "last activity", "actions"],
      ks.map((k) => [
        h("a", { href: "#/kernels/" + k.id, id: "link-" + k.id, text: k.id.slice(0, 8) }), k.owner, k.name, k.rm,
        where(k), k.state + (k.state === "running" ? " / " + k.execution_state : ""), k.connections,
        fmtTime(k.created), ago(k.last_activity),
        live(k) ? h("span", {}, ["Interrupt", "Restart", "Shut down"].map((a) =>
          h("button", { type: "button", id: "act-" + a.replace(" ", "-").toLowerCase() + "-" + k.id, "data-action": a,
            "aria-label": a + " " + k.id, onclick: () => act(k, a), text: a }))) : "",
      ]), "No kernels.");
    if (t.tagName === "TABLE") t.id = "kernels-table";
    refresh(box, t); // the rows are replaced; the keyboard focus stays
  };
  let timer;
  q.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => load().catch((e) => (err.textContent = e.message)), 250); });
  st.addEventListener("change", () => load().catch((e) => (err.textContent = e.message)));
  await load();
  every(3000, () => load().catch(() => {}));
}

// where a kernel runs: host, YARN application (linked to the RM's page
// when the handle names it), or pod.
let rmWeb = {}; // resource manager -> its web address, from /api/cluster
function where(k) {
  let hd = {};
  try { hd = k.handle ? (typeof k.handle === "string" ? JSON.parse(k.handle) : k.handle) : {}; } catch { hd = {}; }
  const app = hd.app_id || hd.application_id;
  const web = rmWeb[k.rm];
  if (app && web && /^https?:\/\//.test(web)) return h("a", { href: web + "/cluster/app/" + encodeURIComponent(app), rel: "noopener", text: app });
  if (app) return app;
  if (hd.pod) return (hd.namespace ? hd.namespace + "/" : "") + hd.pod;
  return k.host || "";
}

async function kernelDetails(root, id) {
  const err = alertBox();
  root.append(h("p", {}, h("a", { href: "#/kernels", text: "← Kernels" })), h("h1", { text: "Kernel " + id }), err);
  let d;
  try { d = await api("GET", "api/kernel-records/" + encodeURIComponent(id)); } catch (e) { err.textContent = e.message; return; }
  const k = d.kernel;
  root.append(h("dl", { id: "kernel-record" },
    [["id", k.id], ["owner", k.owner], ["kernelspec", k.name], ["resource manager", k.rm], ["where", where(k)],
      ["worker", k.worker || ""], ["state", k.state], ["execution state", k.execution_state], ["connections", k.connections],
      ["started", fmtTime(k.created)], ["updated", fmtTime(k.updated)], ["last activity", fmtTime(k.last_activity)],
      ["reason", d.reason || ""], ["restarts", d.restarts || 0]].map(([a, b]) => [h("dt", { text: a }), h("dd", {}, b)])),
  h("details", {}, h("summary", { text: "Launch configuration" }), h("pre", { text: JSON.stringify(d.launch, null, 2) })));
  const list = h("ol", { class: "timeline", id: "timeline", "aria-live": "polite" });
  const live = h("span", { class: "muted", id: "timeline-status", text: "loading…" });
  root.append(h("h2", {}, "Event timeline ", live), list);
  const add = (e) => list.append(h("li", { "data-type": e.type },
    h("time", { datetime: e.time, text: fmtTime(e.time) }), " ", h("strong", { text: e.type }),
    " — ", e.source || "", e.actor ? " by " + e.actor : "", e.reason ? ": " + e.reason : ""));
  let cursor = 0, more = true;
  while (more) {
    const p = await api("GET", "api/events?kernel=" + encodeURIComponent(id) + "&limit=1000&cursor=" + cursor);
    p.events.forEach(add);
    cursor = p.next_cursor;
    more = p.more;
  }
  // Live: the audit feed from where the history ended.
  const es = new EventSource(base + "api/events/stream?kernel=" + encodeURIComponent(id) + "&cursor=" + cursor, { withCredentials: true });
  es.onopen = () => (live.textContent = "live");
  es.onmessage = (m) => { try { add(JSON.parse(m.data)); } catch { /* a malformed event is skipped */ } };
  es.onerror = () => (live.textContent = "reconnecting…");
  cleanup.push(() => es.close());
}

// ---- kernelspecs ------------------------------------------------------------

function rmOf(spec) {
  const md = spec.metadata || {};
  if (md.kernelbus && md.kernelbus.rm) return md.kernelbus.rm;
  const cls = (md.process_proxy && md.process_proxy.class_name) || "";
  if (/Yarn/.test(cls)) return "yarn";
  if (/Kubernetes/.test(cls)) return "kubernetes";
  if (/Distributed/.test(cls)) return "ssh";
  return "local";
}

async function specs(root) {
  const s = await api("GET", "api/kernelspecs");
  root.append(h("h1", { text: "Kernelspecs" }), table(["name", "display name", "language", "resource manager", ""],
    Object.entries(s.kernelspecs).sort().map(([n, k]) => [
      h("a", { href: "#/specs/" + encodeURIComponent(n), text: n }), k.spec.display_name, k.spec.language, rmOf(k.spec),
      n === s.default ? "default" : ""]), "No kernelspecs."));
}

async function specDetails(root, name) {
  const err = alertBox();
  root.append(h("p", {}, h("a", { href: "#/specs", text: "← Kernelspecs" })), h("h1", { text: "Kernelspec " + name }), err);
  let k;
  try { k = await api("GET", "api/kernelspecs/" + encodeURIComponent(name)); } catch (e) { err.textContent = e.message; return; }
  const sp = k.spec, cfg = (sp.metadata && sp.metadata.process_proxy && sp.metadata.process_proxy.config) || {};
  root.append(h("dl", { id: "spec-record" },
    [["display name", sp.display_name], ["language", sp.language], ["resource manager", rmOf(sp)],
      ["interrupt mode", sp.interrupt_mode || "signal"], ["argv", (sp.argv || []).join(" ")],
      ["who may use it", [cfg.authorized_users ? "only " + [].concat(cfg.authorized_users).join(", ") : "everyone",
        cfg.unauthorized_users ? "; never " + [].concat(cfg.unauthorized_users).join(", ") : ""].join("")]]
      .map(([a, b]) => [h("dt", { text: a }), h("dd", { text: b })])),
  h("h2", { text: "Environment" }), table(["variable", "value"], Object.entries(sp.env || {}).sort(), "No environment variables."),
  h("h2", { text: "Metadata" }), h("pre", { text: JSON.stringify(sp.metadata || {}, null, 2) }));
}

// ---- environments (REST: /api/environments, its options and build log) ----

async function environments(root) {
  root.append(h("h1", { text: "Kernel environments" }));
  const opts = await api("GET", "api/environments/options");
  const err = alertBox(), msg = h("p", { role: "status", class: "ok" });
  const list = h("div", { id: "env-list" });
  const log = h("pre", { id: "env-log", hidden: true });
  const progress = h("progress", { id: "env-progress", max: 100, value: 0, hidden: true, "aria-label": "build progress" });
  const load = async () => {
    const envs = await api("GET", "api/environments");
    list.replaceChildren(table(["name", "display name", "python", "RM", "owner", "state", "kernelspec", ""],
      envs.map((e) => [e.name, e.display_name, e.python, e.rm, e.owner,
        e.state + (e.state === "building" ? " " + e.progress + " %" : "") + (e.message && e.message !== e.state ? ": " + e.message : ""),
        e.kernelspec ? h("a", { href: "#/specs/" + encodeURIComponent(e.kernelspec), text: e.kernelspec }) : "",
        h("button", { type: "button", "aria-label": "Delete environment " + e.name, text: "Delete", onclick: async () => {
          if (!confirm("Delete environment " + e.name + "? Its kernelspec goes; running kernels keep running.")) return;
          try { await api("DELETE", "api/environments/" + encodeURIComponent(e.name)); await load(); } catch (x) { err.textContent = x.message; }
        } })]), "No environments yet."));
  };
  if (!opts.enabled) { // existing environments can still be seen and deleted
    root.append(h("p", { class: "muted", id: "env-unavailable",
      text: "This front-end offers no Python to build new environments with (see --env-python)." }), err, list);
    await load();
    return;
  }
  const follow = (env) => {
    log.hidden = false; progress.hidden = false;
    log.textContent = "";
    const url = env.log && env.log.startsWith("/") ? env.log : base + "api/environments/" + encodeURIComponent(env.name) + "/log";
    const es = new EventSource(url, { withCredentials: true });
    cleanup.push(() => es.close());
    es.onmessage = (m) => {
      let d; try { d = JSON.parse(m.data); } catch { return; }
      if (d.line) log.textContent += d.line + "\n";
      if (typeof d.progress === "number") progress.value = d.progress;
      if (d.state === "ready" || d.state === "failed") {
        es.close();
        msg.textContent = "Environment " + env.name + ": " + d.state + ".";
        load().catch(() => {});
      }
    };
  };
  const f = (id, label, el) => h("label", { for: id }, label, el);
  const inp = (id, attrs) => h("input", { id, name: id.replace("env-", ""), ...attrs });
  const pySel = h("select", { id: "env-python" }, (opts.pythons || []).map((p) => h("option", { value: p, text: p })));
  const rmSel = h("select", { id: "env-rm" }, (opts.rms || []).map((r) => h("option", { value: r, text: r })));
  const reqs = h("textarea", { id: "env-requirements", rows: 4, placeholder: "one requirement a line, e.g. six==1.16.0" });
  const conda = h("textarea", { id: "env-conda", rows: 2, disabled: !opts.conda,
    placeholder: opts.conda ? "conda packages, one a line" : "the build hosts have no conda" });
  const lim = opts.limits || {};
  const res = ["memory_mb", "cpus", "gpus", "executors"].map((k) =>
    [k, inp("env-" + k, { type: "number", min: 0, max: lim[k] || undefined, placeholder: lim[k] ? "at most " + lim[k] : "" })]);
  const submit = h("button", { type: "submit", text: "Create environment" });
  const form = h("form", { class: "limits", id: "env-form", onsubmit: async (ev) => {
    ev.preventDefault();
    err.textContent = ""; msg.textContent = "";
    const resources = {};
    for (const [k, el] of res) if (el.value) resources[k] = Number(el.value);
    const body = { name: form.querySelector("#env-name").value.trim(), display_name: form.querySelector("#env-display").value.trim(),
      python: pySel.value, requirements: reqs.value, rm: rmSel.value, resources,
      conda: conda.value.split("\n").map((x) => x.trim()).filter(Boolean) };
    submit.disabled = true;
    try {
      const env = await api("POST", "api/environments", body);
      msg.textContent = "Environment " + env.name + " accepted; building…";
      await load();
      follow(env);
    } catch (e) { err.textContent = e.message; } finally { submit.disabled = false; }
  } },
  f("env-name", "name", inp("env-name", { required: true, pattern: "[a-z][a-z0-9_\\-]*", autocomplete: "off" })),
  f("env-display", "display name", inp("env-display", { autocomplete: "off" })),
  f("env-python", "Python", pySel), f("env-rm", "resource manager", rmSel),
  res.map(([k, el]) => f("env-" + k, k.replace("_mb", " (MB)"), el)),
  f("env-requirements", "pip requirements", reqs), f("env-conda", "conda packages", conda), submit);
  root.append(list, h("h2", { text: "New environment" }), form, err, msg, progress, log);
  await load();
}

// ---- admin ------------------------------------------------------------------

const limitFields = [
  ["max_kernels", "max kernels"], ["driver_memory_mb", "driver memory (MB)"], ["executor_memory_mb", "executor memory (MB)"],
  ["cores", "cores"], ["executors", "executors"], ["gpus", "GPUs"],
];

function limitsForm(id, l, onsave, withUser) {
  const inputs = {};
  const user = withUser ? h("input", { id: id + "-user", name: "user", required: true, autocomplete: "off" }) : null;
  const f = h("form", { class: "limits", id, onsubmit: async (ev) => {
    ev.preventDefault();
    const v = {};
    for (const [k] of limitFields) v[k] = Number(inputs[k].value || 0);
    for (const k of ["allowed_rms", "allowed_queues"]) v[k] = inputs[k].value.split(",").map((s) => s.trim()).filter(Boolean);
    await onsave(v, user && user.value.trim());
  } },
  user && h("label", { for: id + "-user" }, "user", user),
  limitFields.map(([k, label]) => h("label", { for: id + "-" + k }, label,
    (inputs[k] = h("input", { id: id + "-" + k, name: k, type: "number", min: 0, value: l[k] || 0 })))),
  ["allowed_rms", "allowed_queues"].map((k) => h("label", { for: id + "-" + k }, k.replace("_", " ") + " (comma-separated)",
    (inputs[k] = h("input", { id: id + "-" + k, name: k, value: (l[k] || []).join(", ") })))),
  h("button", { type: "submit", text: withUser ? "Set user limits" : "Save default limits" }));
  return f;
}

async function admin(root) {
  const err = alertBox(), msg = h("p", { role: "status", class: "ok" });
  root.append(h("h1", { text: "Admin: limits" }), h("p", { class: "muted",
    text: "Enforced by the REST API on every kernel start. 0 or empty means no limit; a user's own limits replace the default." }), err, msg);
  const box = h("div");
  root.append(box);
  const save = (path) => async (v, user) => {
    err.textContent = ""; msg.textContent = "";
    try {
      await api("PUT", path(user), v);
      msg.textContent = "Saved.";
      await load();
    } catch (e) { err.textContent = e.message; }
  };
  const load = async () => {
    const l = await api("GET", "api/admin/limits");
    box.replaceChildren(
      h("h2", { text: "Default" }), limitsForm("default-limits", l.default, save(() => "api/admin/limits/default")),
      h("h2", { text: "Per user" }),
      table(["user", ...limitFields.map(([, t]) => t), "RMs", "queues", ""], Object.entries(l.users).sort().map(([u, x]) => [
        u, ...limitFields.map(([k]) => x[k] || "—"), x.allowed_rms.join(", ") || "any", x.allowed_queues.join(", ") || "any",
        h("button", { type: "button", "aria-label": "Remove the limits of " + u, text: "Remove", onclick: async () => {
          if (!confirm("Remove the limits of " + u + "? The default applies then.")) return;
          try { await api("DELETE", "api/admin/limits/users/" + encodeURIComponent(u)); await load(); } catch (e) { err.textContent = e.message; }
        } })]), "No user has limits of their own."),
      limitsForm("user-limits", {}, save((u) => "api/admin/limits/users/" + encodeURIComponent(u || "")), true));
  };
  await load();
}

// ---- router -----------------------------------------------------------------

const routes = [
  [/^#\/overview$/, overview], [/^#\/kernels$/, kernels], [/^#\/kernels\/([\w-]+)$/, kernelDetails],
  [/^#\/specs$/, specs], [/^#\/specs\/(.+)$/, specDetails], [/^#\/environments$/, environments], [/^#\/admin$/, admin],
];

async function route() {
  cleanup.forEach((f) => f());
  cleanup = [];
  const hash = location.hash || "#/overview";
  const root = view();
  root.replaceChildren();
  for (const a of document.querySelectorAll("header nav a")) {
    if (hash.startsWith(a.getAttribute("href"))) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const m = routes.find(([re]) => re.test(hash));
  if (!m) { root.append(h("h1", { text: "No such page" }), h("p", {}, h("a", { href: "#/overview", text: "Overview" }))); return; }
  const args = hash.match(m[0]).slice(1).map(decodeURIComponent);
  document.title = hash.slice(2).split("/")[0] + " · kernelbus";
  try { await m[1](root, ...args); } catch (e) {
    if (e.status !== 401) root.append(h("p", { role: "alert", class: "error", text: e.message }));
  }
  root.dataset.ready = hash;
  if (document.activeElement === document.body || !document.activeElement) root.focus();
}

async function start() {
  me = await api("GET", "api/me");
  document.getElementById("me").textContent = (me.name || "anonymous") + (me.admin ? " (admin)" : "");
  document.getElementById("nav-admin").hidden = !me.admin;
  document.getElementById("logout").addEventListener("click", async () => {
    await fetch(base + "ui/logout", { method: "POST", credentials: "same-origin" });
    location.replace(base + "ui/login.html");
  });
  window.addEventListener("hashchange", route);
  await route();
}

start().catch((e) => {
  if (e.status !== 401) view().append(h("p", { role: "alert", class: "error", text: "The gateway did not answer: " + e.message }));
});
