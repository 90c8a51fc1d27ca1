// Issue 10 as its reporter most likely ran it: three stock automerge-repo
// devices of one user, each its own Repo behind its own Node TCP proxy that
// injects faults (connection resets, black holes, 7-byte pieces), editing
// one shared document while the server is killed with SIGKILL and restarted
// twice. At the end it counts, on a fresh read from the server, which edits
// arrived, and whether the server acknowledged every device's heads.
//
// Usage (from bench/reference):
//   node js-faults.mjs --server ours|reference [--variant hold|drop|hold-reset]
//     [--seed N] [--storage memory|nodefs] [--crashes-ms 7000,14000 | --crashes N]
//     [--faults reset,blackhole,tiny] [--edits 100] [--rate 4] [--devices 3]
//     [--bin /tmp/cdx-server] [--port 18400] [--out DIR] [--retry-ms 1000]
//     [--server-log FILTER]   (ours: its tracing filter, "info" by default)
//     [--trace]               (log every sync message each device sends and receives)
//     [--signal SIGKILL|SIGTERM]  (how the server is stopped mid-run; SIGKILL by default)
//
// --variant: a black hole either holds the traffic and delivers it afterwards
// (hold), reads and discards it while it lasts with the connection left open
// (drop), or holds it and then resets every connection, losing what it held
// (hold-reset). Everything the run produces (the server's log, each device's
// event log) goes to --out, a fresh temporary directory by default.
import { Repo, splice } from "@automerge/automerge-repo";
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket";
import { NodeFSStorageAdapter } from "@automerge/automerge-repo-storage-nodefs";
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseFlags } from "../flags.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const args = parseFlags();
const serverKind = args.server ?? "ours";
if (!["ours", "reference"].includes(serverKind)) throw new Error("--server is ours or reference");
const variant = args.variant ?? "hold";
if (!["hold", "drop", "hold-reset"].includes(variant)) throw new Error("--variant is hold, drop or hold-reset");
const seed = Number(args.seed ?? Math.floor(Math.random() * 2 ** 31));
const storageMode = args.storage ?? "memory";
const faultKinds = (args.faults ?? "reset,blackhole,tiny").split(",").filter(Boolean);
const editsPerDevice = Number(args.edits ?? 100);
const rate = Number(args.rate ?? 4);
const deviceCount = Number(args.devices ?? 3);
const retryMs = Number(args["retry-ms"] ?? 1000);
const port = Number(args.port ?? 18400 + (process.pid % 500));
const bin = args.bin ?? "/tmp/cdx-server";
const out = args.out ?? fs.mkdtempSync(path.join(os.tmpdir(), `js-faults-${serverKind}-${seed}-`));
fs.mkdirSync(out, { recursive: true });
const dataDir = path.join(out, "server-data");
const trace = args.trace === "true" ? await import("@automerge/automerge") : undefined;
const started = Date.now();

// A small seeded generator (mulberry32), so a failing run can be repeated.
function rng(s) {
  let a = s >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const random = rng(seed);
const between = (lo, hi) => lo + random() * (hi - lo);
const sleep = ms => new Promise(r => setTimeout(r, ms));
const elapsed = () => ((Date.now() - started) / 1000).toFixed(2);

// One event log per run: every line says when, who and what.
const events = fs.createWriteStream(path.join(out, "events.log"));
const note = (who, ...what) =>
  !events.writableEnded &&
  events.write(`${elapsed()} ${who} ${what.map(w => (typeof w === "string" ? w : JSON.stringify(w))).join(" ")}\n`);
console.error(`js-faults: server=${serverKind} variant=${variant} seed=${seed} storage=${storageMode} out=${out}`);

// ---- the server ----------------------------------------------------------------

let server;
let serverExited;
const serverLog = fs.openSync(path.join(out, "server.log"), "a");

function startServer() {
  fs.mkdirSync(dataDir, { recursive: true });
  if (serverKind === "ours") {
    const tomorrow = new Date(Date.now() + 86400000).toISOString().slice(0, 10);
    // The limits raised as bench/server.sh raises them, so that a fault, not a
    // rate limit, is what the devices meet.
    server = spawn(
      bin,
      [
        "--listen", `127.0.0.1:${port}`, "--data-dir", dataDir, "--log", args["server-log"] ?? "info",
        "--allow-test-codes", "--test-codes-expire", tomorrow,
        "--otp-resend-cooldown-secs", "0", "--otp-hourly-cap", "100000", "--otp-daily-cap", "100000",
        "--ip-send-limit", "1000000", "--ip-verify-limit", "1000000", "--ip-refresh-limit", "1000000",
        "--sync-max-connections-per-user", "100000", "--sync-messages-per-second", "100000",
        "--sync-message-burst", "100000", "--sync-max-connections", "100000",
        "--sync-connections-per-second", "1000000", "--sync-connection-burst", "1000000",
      ],
      { env: { ...process.env, CODEEDEX_TEST_CODES: "bench-0@example.com=123456" }, stdio: ["ignore", serverLog, serverLog] },
    );
  } else {
    server = spawn(process.execPath, [path.join(here, "server.mjs")], {
      env: { ...process.env, PORT: String(port), DATA: dataDir },
      stdio: ["ignore", serverLog, serverLog],
    });
  }
  serverExited = new Promise(r => server.once("exit", r));
  note("server", "started pid", server.pid);
}

// Waits until the server accepts a TCP connection (and, for ours, answers
// /healthz), polling with a deadline.
async function serverUp() {
  const deadline = Date.now() + 20000;
  while (Date.now() < deadline) {
    if (serverKind === "ours") {
      try {
        const r = await fetch(`http://127.0.0.1:${port}/healthz`);
        if (r.ok) return;
      } catch {}
    } else {
      const ok = await new Promise(resolve => {
        const s = net.connect(port, "127.0.0.1", () => (s.destroy(), resolve(true)));
        s.on("error", () => resolve(false));
      });
      if (ok) return;
    }
    await sleep(50);
  }
  throw new Error(`the server on port ${port} never came up; see ${out}/server.log`);
}

// The signal that stops the server mid-run: SIGKILL as the report says, or
// SIGTERM (--signal SIGTERM) to compare with a graceful shutdown, in which
// our server closes every connection with 1001 after the frames before it.
const stopSignal = args.signal ?? "SIGKILL";

async function crashAndRestart() {
  note("server", stopSignal, "pid", server.pid);
  fs.writeSync(serverLog, `\n==== js-faults: ${stopSignal} at ${elapsed()} s ====\n`);
  server.kill(stopSignal);
  await serverExited;
  startServer();
  await serverUp();
  note("server", "up again");
}

// Signs in as bench-0@example.com, as each of the user's devices does.
async function token(deviceName) {
  const post = (p, body) =>
    fetch(`http://127.0.0.1:${port}${p}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
  const email = "bench-0@example.com";
  const sent = await post("/v1/auth/otp", { email });
  if (sent.status !== 202) throw new Error(`code request answered ${sent.status}`);
  const verified = await post("/v1/auth/verify", { email, code: "123456", device_name: deviceName });
  if (verified.status !== 200) throw new Error(`verify answered ${verified.status}`);
  return (await verified.json()).access_token;
}

async function syncUrl(viaPort, deviceName) {
  const base = `ws://127.0.0.1:${viaPort}`;
  if (serverKind === "reference") return base;
  return `${base}/v1/sync?access_token=${await token(deviceName)}`;
}

// ---- the proxy -------------------------------------------------------------------

// One direction of one proxied connection. What arrives is queued and written
// on, whole or in 7-byte pieces; during a black hole it is held (hold,
// hold-reset) or read and thrown away (drop).
class Pipe {
  queue = [];
  ended = false;
  writing = false;
  constructor(proxy, from, to) {
    this.proxy = proxy;
    this.to = to;
    from.on("data", chunk => {
      if (this.proxy.blackHole && variant === "drop") return;
      this.queue.push(chunk);
      this.pump();
    });
    from.on("end", () => {
      this.ended = true;
      this.pump();
    });
  }
  pump() {
    if (this.writing || this.to.destroyed) return;
    if (this.proxy.blackHole) return;
    if (this.queue.length === 0) {
      if (this.ended && !this.to.writableEnded) this.to.end();
      return;
    }
    if (!this.proxy.tiny) {
      for (const chunk of this.queue.splice(0)) this.to.write(chunk);
      return this.pump();
    }
    // Seven bytes, then the next piece on a later turn of the event loop, so
    // that the pieces leave as separate segments (the sockets have no Nagle).
    const head = this.queue[0];
    this.to.write(head.subarray(0, 7));
    if (head.length > 7) this.queue[0] = head.subarray(7);
    else this.queue.shift();
    this.writing = true;
    setImmediate(() => {
      this.writing = false;
      this.pump();
    });
  }
}

class Proxy {
  blackHole = false;
  tiny = false;
  pairs = new Set();
  counts = { reset: 0, blackhole: 0, tiny: 0 };
  constructor(name) {
    this.name = name;
    this.server = net.createServer(client => {
      client.setNoDelay(true);
      const upstream = net.connect(port, "127.0.0.1");
      upstream.setNoDelay(true);
      const pair = { client, upstream, pipes: [] };
      pair.pipes.push(new Pipe(this, client, upstream), new Pipe(this, upstream, client));
      this.pairs.add(pair);
      const drop = () => {
        this.pairs.delete(pair);
        if (!client.destroyed) client.destroy();
        if (!upstream.destroyed) upstream.destroy();
      };
      // A reset or error on one side ends the other at once, as a real path does.
      client.on("error", drop);
      upstream.on("error", drop);
      // A side that closed cleanly has ended its pipe, which ends the other
      // side once what it queued is delivered; anything else drops the pair.
      const closed = side => () => {
        if (!side.readableEnded) drop();
        else if (client.destroyed && upstream.destroyed) this.pairs.delete(pair);
      };
      client.on("close", closed(client));
      upstream.on("close", closed(upstream));
    });
  }
  listen() {
    return new Promise(r => this.server.listen(0, "127.0.0.1", () => r(this.server.address().port)));
  }
  reset() {
    this.counts.reset += 1;
    note(this.name, "reset", this.pairs.size, "connections");
    for (const { client, upstream } of this.pairs) {
      if (!client.destroyed) client.resetAndDestroy();
      if (!upstream.destroyed) upstream.resetAndDestroy();
    }
    this.pairs.clear();
  }
  async hole(ms) {
    this.counts.blackhole += 1;
    note(this.name, "black hole", Math.round(ms), "ms", variant);
    this.blackHole = true;
    await sleep(ms);
    this.blackHole = false;
    if (variant === "hold-reset") this.reset();
    else for (const pair of this.pairs) for (const pipe of pair.pipes) pipe.pump();
  }
  toggleTiny() {
    this.counts.tiny += 1;
    this.tiny = !this.tiny;
    note(this.name, "tiny writes", this.tiny ? "on" : "off");
  }
  // Faults at random moments, 0.2 to 3 s apart, until stopped.
  async run(shouldStop) {
    for (;;) {
      await sleep(between(200, 3000));
      if (shouldStop()) return;
      const kind = faultKinds[Math.floor(random() * faultKinds.length)];
      if (kind === "reset") this.reset();
      else if (kind === "blackhole") await this.hole(between(1000, 3000));
      else if (kind === "tiny") this.toggleTiny();
    }
  }
  heal() {
    this.blackHole = false;
    this.tiny = false;
    for (const pair of this.pairs) for (const pipe of pair.pipes) pipe.pump();
  }
}

// ---- the devices -------------------------------------------------------------

// The stock adapter with exactly two changes, both a browser's behaviour: a
// socket error is logged instead of thrown (Node's adapter rethrows anything
// but ECONNREFUSED, which ends the process; a browser reports nothing and the
// close event reconnects), and every socket the adapter opens gets an 'error'
// listener (the adapter removes its own when it replaces a socket, and Node's
// EventEmitter throws an unhandled 'error', which a browser does not).
// The rest is observation only: listeners that count and log.
function makeAdapter(url, who, stats) {
  const adapter = new WebSocketClientAdapter(url, retryMs);
  adapter.onError = event => {
    const message = event?.error?.message ?? event?.message ?? "unknown";
    stats.errors += 1;
    note(who, "socket error:", message);
  };
  if (trace) {
    // --trace: pass-through wrappers that log every sync message's heads,
    // need and change count in each direction (the automerge package is the
    // repo's own dependency, loaded only for this).
    const describe = message => {
      if (message?.type !== "sync" || !(message.data instanceof Uint8Array)) return message?.type;
      const m = trace.decodeSyncMessage(message.data);
      const short = hashes => hashes.map(h => h.slice(0, 6)).join(",");
      return `sync heads=[${short(m.heads)}] need=[${short(m.need)}] have=${m.have.length} changes=${m.changes.length}`;
    };
    const stockSend = adapter.send.bind(adapter);
    adapter.send = message => {
      note(who, "out", describe(message), `ready=${adapter.socket?.readyState}`);
      return stockSend(message);
    };
    adapter.on("message", message => note(who, "in", describe(message)));
  }
  const stockConnect = adapter.connect.bind(adapter);
  adapter.connect = (...a) => {
    const result = stockConnect(...a);
    const socket = adapter.socket;
    stats.sockets += 1;
    socket?.on?.("error", () => {});
    socket?.on?.("open", () => {
      stats.opens += 1;
      note(who, "socket open");
    });
    socket?.on?.("close", (code, reason) => {
      const key = String(code);
      stats.closeCodes[key] = (stats.closeCodes[key] ?? 0) + 1;
      note(who, "socket closed", code, reason?.toString?.() ?? "");
    });
    return result;
  };
  return adapter;
}

function makeRepo(url, who, stats) {
  const adapter = makeAdapter(url, who, stats);
  const storage =
    storageMode === "nodefs" ? new NodeFSStorageAdapter(fs.mkdtempSync(path.join(out, `${who}-storage-`))) : undefined;
  const repo = new Repo({ network: [adapter], storage, peerId: `${who}-${process.pid}-${seed}` });
  repo.networkSubsystem.on("peer", ({ peerId, peerMetadata }) => {
    stats.peers += 1;
    stats.serverStorageId = peerMetadata?.storageId ?? stats.serverStorageId;
    note(who, "peer", peerId, peerMetadata?.storageId ?? "");
  });
  return { repo, adapter };
}

async function findWithRetry(repo, url, who) {
  for (let attempt = 0; attempt < 20; attempt++) {
    try {
      return await repo.find(url);
    } catch (e) {
      note(who, "find failed:", String(e?.message ?? e));
      await sleep(500);
    }
  }
  throw new Error(`${who} never found ${url}`);
}

const tokenOf = (d, n) => `<${d}:${String(n).padStart(3, "0")}>`;
const headsKey = heads => [...heads].sort().join(",");

// Reads the document from the server with a fresh Repo, without a proxy, and
// returns its text (undefined if the server does not have it in time).
async function freshRead(docUrl, label) {
  const stats = newStats();
  const url = await syncUrl(port, label);
  const { repo } = makeRepo(url, label, stats);
  try {
    const handle = await Promise.race([findWithRetry(repo, docUrl, label), sleep(15000).then(() => undefined)]);
    return handle ? { text: handle.doc().notes, heads: handle.heads(), repo, handle } : { repo };
  } catch {
    return { repo };
  }
}

function newStats() {
  return { sockets: 0, opens: 0, peers: 0, errors: 0, closeCodes: {}, exceptions: {}, firstException: undefined, serverStorageId: undefined };
}

// ---- the run ---------------------------------------------------------------------

process.on("uncaughtException", e => {
  note("process", "uncaught exception:", String(e?.stack ?? e));
  console.error("js-faults: uncaught exception:", e);
});
process.on("unhandledRejection", e => {
  note("process", "unhandled rejection:", String(e?.stack ?? e));
});

startServer();
await serverUp();

const devices = [];
for (let d = 0; d < deviceCount; d++) {
  const who = `device${d}`;
  const proxy = new Proxy(`proxy${d}`);
  const proxyPort = await proxy.listen();
  const stats = newStats();
  const { repo, adapter } = makeRepo(await syncUrl(proxyPort, who), who, stats);
  devices.push({ d, who, proxy, stats, repo, adapter, handle: undefined, made: 0 });
}
await Promise.all(devices.map(dev => dev.repo.networkSubsystem.whenReady()));

// Device 0 creates the shared document; the others find it once the server
// has it (before any fault starts).
const created = devices[0].repo.create({ notes: "" });
devices[0].handle = created;
const docUrl = created.url;
note("device0", "created", docUrl);
await sleep(1000);
for (const dev of devices.slice(1)) dev.handle = await findWithRetry(dev.repo, docUrl, dev.who);

// Faults and crashes start with the edits.
let stopFaults = false;
const faultRuns = devices.map(dev => dev.proxy.run(() => stopFaults));
const crashTimes = args["crashes-ms"]
  ? args["crashes-ms"].split(",").map(Number)
  : Array.from({ length: Number(args.crashes ?? 2) }, () => Math.round(between(3000, 22000))).sort((a, b) => a - b);
const editsStarted = Date.now();
const crashes = (async () => {
  for (const at of crashTimes) {
    await sleep(Math.max(0, editsStarted + at - Date.now()));
    await crashAndRestart();
  }
})();

const interval = 1000 / rate;
await Promise.all(
  devices.map(async dev => {
    for (let n = 0; n < editsPerDevice; n++) {
      await sleep(Math.max(0, editsStarted + n * interval + (dev.d * interval) / deviceCount - Date.now()));
      const mark = tokenOf(dev.d, n);
      try {
        dev.handle.change(doc => splice(doc, ["notes"], doc.notes.length, 0, mark));
        dev.made += 1;
      } catch (e) {
        const message = String(e?.message ?? e);
        dev.stats.exceptions[message] = (dev.stats.exceptions[message] ?? 0) + 1;
        dev.stats.firstException ??= n;
        note(dev.who, "edit", n, "threw:", message);
      }
    }
  }),
);
await crashes;
stopFaults = true;
await Promise.all(faultRuns);
for (const dev of devices) dev.proxy.heal();
note("run", "edits done, faults stopped");

// Wait (up to 30 s) until every device is acknowledged: the server's heads,
// as the device's synchronizer knows them, are the device's own heads.
const acked = dev => {
  const storageId = dev.stats.serverStorageId;
  const info = storageId && dev.handle.getSyncInfo(storageId);
  return !!info && headsKey(info.lastHeads) === headsKey(dev.handle.heads());
};
const ackDeadline = Date.now() + 30000;
while (Date.now() < ackDeadline && !devices.every(acked)) await sleep(200);
const ackWait = Date.now() - (ackDeadline - 30000);

// The fresh read, straight from the server.
const read = await freshRead(docUrl, "reader");
const text = read.text ?? "";
const perDevice = devices.map(dev => {
  let present = 0;
  let firstMissing;
  for (let n = 0; n < editsPerDevice; n++) {
    if (text.includes(tokenOf(dev.d, n))) present += 1;
    else firstMissing ??= n;
  }
  const own = dev.handle.doc()?.notes ?? "";
  let ownHas = 0;
  for (let n = 0; n < editsPerDevice; n++) if (own.includes(tokenOf(dev.d, n))) ownHas += 1;
  // What the device received of the others' edits: a device can be
  // unacknowledged (its heads are not the server's) only because it lacks
  // changes the server has.
  let received = 0;
  for (const other of devices)
    if (other !== dev) for (let n = 0; n < editsPerDevice; n++) if (own.includes(tokenOf(other.d, n))) received += 1;
  const exceptions = Object.values(dev.stats.exceptions).reduce((a, b) => a + b, 0);
  return {
    device: dev.d,
    present: `${present}/${editsPerDevice}`,
    firstMissing: firstMissing ?? "-",
    localEdits: ownHas,
    received: `${received}/${editsPerDevice * (deviceCount - 1)}`,
    exceptions,
    firstException: dev.stats.firstException ?? "-",
    exceptionMessages: Object.keys(dev.stats.exceptions),
    acked: acked(dev),
    sockets: dev.stats.sockets,
    reconnects: Math.max(0, dev.stats.peers - 1),
    closeCodes: dev.stats.closeCodes,
    sameAsServer: !!read.heads && headsKey(dev.handle.heads()) === headsKey(read.heads),
  };
});
const faults = devices.reduce(
  (sum, dev) => ({
    reset: sum.reset + dev.proxy.counts.reset,
    blackhole: sum.blackhole + dev.proxy.counts.blackhole,
    tiny: sum.tiny + dev.proxy.counts.tiny,
  }),
  { reset: 0, blackhole: 0, tiny: 0 },
);
const total = perDevice.reduce((s, p) => s + Number(p.present.split("/")[0]), 0);
const summary = {
  server: serverKind,
  variant,
  signal: stopSignal,
  seed,
  storage: storageMode,
  crashesMs: crashTimes,
  total: `${total}/${editsPerDevice * deviceCount}`,
  readOk: read.text !== undefined,
  allAcked: perDevice.every(p => p.acked),
  ackWaitMs: ackWait,
  devices: perDevice,
  faults,
  out,
};
fs.writeFileSync(path.join(out, "summary.json"), JSON.stringify(summary, null, 2));
const line = perDevice
  .map(
    p =>
      `d${p.device} ${p.present} miss@${p.firstMissing} exc=${p.exceptions}${p.exceptions ? `@${p.firstException}` : ""} ` +
      `ack=${p.acked ? "y" : "n"} recv=${p.received} reconn=${p.reconnects}`,
  )
  .join(" | ");
console.log(
  `${serverKind} ${variant} seed=${seed} ${storageMode} ${stopSignal} crashes=${crashTimes.join(",")} total=${summary.total} ` +
    `| ${line} | faults r=${faults.reset} bh=${faults.blackhole} tiny=${faults.tiny} | ${out}`,
);
events.end();
server.kill("SIGKILL");
await serverExited;
process.exit(0);
