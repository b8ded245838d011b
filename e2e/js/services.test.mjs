// @jupyterlab/services (JupyterLab's own client library) talking straight to the gateway,
// as JupyterLab does when pointed at a kernel server: REST with `Authorization: token`,
// websocket with session_id and token in the query, offering the
// v1.kernel.websocket.jupyter.org subprotocol.
//
// Run through scripts/e2e-js.sh, which starts a gateway and sets:
//   KB_GATEWAY_URL  http://127.0.0.1:PORT
//   KB_TOKEN        the gateway's token ('' for none)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync } from 'node:fs';
import { WebSocket as WS } from 'ws';
import services from '@jupyterlab/services';

const { ServerConnection, KernelManager, KernelAPI, KernelSpecAPI } = services;

const baseUrl = process.env.KB_GATEWAY_URL;
const token = process.env.KB_TOKEN ?? '';
const V1 = 'v1.kernel.websocket.jupyter.org';

// Every socket the library opens, with what it offered and what the server chose.
const sockets = [];
class RecordingWebSocket extends WS {
  constructor(url, protocols, options) {
    super(url, protocols, options);
    const rec = { url: String(url), offered: protocols, protocol: null };
    sockets.push(rec);
    this.addEventListener('open', () => {
      rec.protocol = this.protocol;
    });
  }
}

// Every REST answer, as JSON Lines in KB_OPENAPI_LOG when set: scripts/e2e-js.sh checks
// them against frontend/openapi.yaml after the suite (e2e/python/openapi_check.py).
const openapiLog = process.env.KB_OPENAPI_LOG;
async function recordingFetch(input, init) {
  const resp = await globalThis.fetch(input, init);
  if (openapiLog) {
    const isReq = input instanceof globalThis.Request;
    const url = new URL(isReq ? input.url : String(input));
    const base = new URL(baseUrl).pathname.replace(/\/$/, '');
    appendFileSync(openapiLog, JSON.stringify({
      method: (init?.method ?? (isReq ? input.method : 'GET')).toUpperCase(),
      path: url.pathname.startsWith(base) ? url.pathname.slice(base.length) : url.pathname,
      status: resp.status,
      content_type: resp.headers.get('content-type') ?? '',
      body: await resp.clone().text(),
    }) + '\n');
  }
  return resp;
}

let settings;
let manager;
let kernel;

/** Resolve when `pred` holds, polling every 50 ms; reject after `ms`. */
async function until(pred, ms, what) {
  const deadline = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Run code; return {reply, stdout, iopub}. Rejects after ms. */
async function execute(k, code, ms = 60_000, onIOPub = undefined) {
  const future = k.requestExecute({ code });
  let stdout = '';
  const iopub = [];
  future.onIOPub = (msg) => {
    iopub.push(msg);
    if (msg.header.msg_type === 'stream' && msg.content.name === 'stdout') stdout += msg.content.text;
    if (onIOPub) onIOPub(msg);
  };
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no reply to ${JSON.stringify(code)} within ${ms} ms`)), ms);
  });
  try {
    const reply = await Promise.race([future.done, timeout]);
    return { reply, stdout, iopub };
  } finally {
    clearTimeout(timer);
  }
}

before(async () => {
  assert.ok(baseUrl, 'KB_GATEWAY_URL must be set (run scripts/e2e-js.sh)');
  settings = ServerConnection.makeSettings({
    baseUrl,
    wsUrl: 'ws' + baseUrl.slice(4),
    token,
    appendToken: true,
    WebSocket: RecordingWebSocket,
    fetch: recordingFetch,
    Request: globalThis.Request,
    Headers: globalThis.Headers,
  });
  manager = new KernelManager({ serverSettings: settings });
  await manager.ready;
});

after(async () => {
  if (kernel && !kernel.isDisposed) {
    try {
      await kernel.shutdown();
    } catch {
      /* already gone */
    }
    kernel.dispose();
  }
  manager?.dispose();
});

test('kernelspecs are valid for JupyterLab', async () => {
  const specs = await KernelSpecAPI.getSpecs(settings);
  assert.ok(specs.kernelspecs.python3, 'python3 spec missing');
  assert.ok(specs.default in specs.kernelspecs);
  const py = specs.kernelspecs.python3;
  assert.equal(py.language, 'python');
  assert.ok(Array.isArray(py.argv));
  assert.ok(Object.keys(py.resources).some((k) => k.startsWith('logo-')), 'no logo resources');
});

test('start python3 and negotiate the v1 websocket protocol', { timeout: 90_000 }, async () => {
  kernel = await manager.startNew({ name: 'python3' });
  assert.match(kernel.id, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  const info = await kernel.info;
  assert.equal(info.status, 'ok');
  assert.equal(info.language_info.name, 'python');
  assert.equal(kernel.connectionStatus, 'connected');

  const mine = sockets.filter((s) => s.url.includes(`/api/kernels/${kernel.id}/channels`));
  assert.ok(mine.length >= 1, 'no websocket to the kernel was opened');
  const s = mine.at(-1);
  assert.ok(s.offered.includes(V1), `client did not offer ${V1}: ${s.offered}`);
  assert.equal(s.protocol, V1, `server chose subprotocol ${JSON.stringify(s.protocol)}`);
  assert.match(s.url, /[?&]session_id=[^&]+/);
  if (token) assert.match(s.url, new RegExp(`[?&]token=${token}`));

  const running = await KernelAPI.listRunning(settings);
  assert.ok(running.some((m) => m.id === kernel.id), 'kernel not listed');
});

test('execute: stream output and reply', { timeout: 60_000 }, async () => {
  const { reply, stdout, iopub } = await execute(kernel, 'print(6*7)');
  assert.equal(reply.content.status, 'ok');
  assert.equal(stdout, '42\n');
  const states = iopub.filter((m) => m.header.msg_type === 'status').map((m) => m.content.execution_state);
  assert.equal(states[0], 'busy');
  assert.equal(states.at(-1), 'idle');
  const r = await execute(kernel, 'kb_js_var = 6 * 7\nkb_js_var');
  const result = r.iopub.find((m) => m.header.msg_type === 'execute_result');
  assert.equal(result?.content.data['text/plain'], '42');
});

test('interrupt a sleep raises KeyboardInterrupt', { timeout: 60_000 }, async () => {
  let sleeping = false;
  const t0 = Date.now();
  const run = execute(
    kernel,
    "import time\nprint('sleeping', flush=True)\ntime.sleep(60)",
    45_000,
    (msg) => {
      if (msg.header.msg_type === 'stream' && msg.content.text.includes('sleeping')) sleeping = true;
    },
  );
  await until(() => sleeping, 30_000, "'sleeping' output");
  await kernel.interrupt();
  const { reply } = await run;
  assert.equal(reply.content.status, 'error');
  assert.equal(reply.content.ename, 'KeyboardInterrupt');
  assert.ok(Date.now() - t0 < 30_000, 'interrupt took too long');
});

test('restart keeps the id and clears state', { timeout: 90_000 }, async () => {
  const id = kernel.id;
  const before = await execute(kernel, 'kb_js_state = 1\nprint(kb_js_state)');
  assert.equal(before.stdout, '1\n');
  const socketsBefore = sockets.length;
  await kernel.restart();
  assert.equal(kernel.id, id);
  await until(() => kernel.connectionStatus === 'connected', 30_000, 'reconnect after restart');
  await kernel.info;
  const after = await execute(kernel, 'print(kb_js_state)');
  assert.equal(after.reply.content.status, 'error');
  assert.equal(after.reply.content.ename, 'NameError');
  // JupyterLab reconnects after a restart, again with v1.
  const reopened = sockets.slice(socketsBefore).filter((s) => s.url.includes(`/api/kernels/${id}/channels`));
  assert.ok(reopened.length >= 1, 'no new websocket after restart');
  assert.equal(reopened.at(-1).protocol, V1);
  const model = await KernelAPI.getKernelModel(id, settings);
  assert.equal(model?.id, id);
});

test('shutdown removes the kernel', { timeout: 60_000 }, async () => {
  const id = kernel.id;
  await kernel.shutdown();
  assert.ok(kernel.isDisposed || kernel.status === 'dead');
  await until(async () => !(await KernelAPI.listRunning(settings)).some((m) => m.id === id), 15_000,
    'kernel to leave the list');
  assert.equal(await KernelAPI.getKernelModel(id, settings), undefined);
  kernel = undefined;
});
