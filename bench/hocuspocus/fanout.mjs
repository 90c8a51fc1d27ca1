// Issue 13's "ten users at the same instant", with Hocuspocus and its own
// provider: documents × devices, each device its own Y.Doc, provider and
// WebSocket, all in one Node process; device d of every document edits at
// the same instant (or, with --arrivals random, each device at the same mean
// rate as a seeded Poisson process). Prints the edit-to-device latency: from
// an edit on one device to its arrival on each other device of the document,
// the same measure as `codeedex-loadgen fanout`.
//
// Usage:
//   node fanout.mjs --serve --port 18360          (the server, in-memory)
//   node fanout.mjs --url ws://127.0.0.1:18360 [--docs 10] [--devices 5]
//        [--rate 0.5] [--seconds 15] [--arrivals together|random]
import { Server } from "@hocuspocus/server";
import { HocuspocusProvider } from "@hocuspocus/provider";
import WebSocket from "ws";
import * as Y from "yjs";
import { parseFlags } from "../flags.mjs";

const args = parseFlags();

if (args.serve === "true") {
  // No extensions: Hocuspocus keeps documents in memory and relays at once,
  // as the measurement ran it.
  const server = new Server({ port: Number(args.port ?? 18360), address: "127.0.0.1", quiet: true });
  await server.listen();
  console.log(`hocuspocus listening on ${args.port ?? 18360}`);
} else {
  await measure();
}

async function measure() {
  const docs = Number(args.docs ?? 10);
  const devices = Number(args.devices ?? 5);
  const rate = Number(args.rate ?? 0.5);
  const seconds = Number(args.seconds ?? 15);
  const arrivals = args.arrivals ?? "together";
  const interval = 1000 / rate;

  const editAt = new Map(); // `${doc}/${device}/${seq}` -> when it was made
  const latencies = [];
  let expected = 0;

  const replicas = [];
  for (let doc = 0; doc < docs; doc++) {
    for (let device = 0; device < devices; device++) {
      const document = new Y.Doc();
      // Without a shared socket the provider makes its own and attaches to
      // it, as one device would.
      const provider = new HocuspocusProvider({
        url: args.url,
        WebSocketPolyfill: WebSocket,
        name: `doc-${doc}`,
        document,
      });
      const marks = document.getMap("marks");
      // The newest edit of each other device seen here.
      const seen = new Map();
      marks.observe(event => {
        if (event.transaction.local) return;
        const now = performance.now();
        for (const key of event.keysChanged) {
          const other = Number(key.slice(1));
          const newest = marks.get(key);
          for (let seq = (seen.get(other) ?? 0) + 1; seq <= newest; seq++) {
            const at = editAt.get(`${doc}/${other}/${seq}`);
            if (at !== undefined) latencies.push(now - at);
          }
          seen.set(other, Math.max(seen.get(other) ?? 0, newest));
        }
      });
      replicas.push({ doc, device, document, provider, marks, edits: 0 });
    }
  }
  await Promise.all(
    replicas.map(
      r => new Promise(resolve => (r.provider.isSynced ? resolve() : r.provider.on("synced", resolve))),
    ),
  );

  // A seeded generator, so that random arrivals repeat from run to run.
  let state = 0x9e3779b9;
  const uniform = () => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return (state + 0.5) / 4294967296;
  };
  const nextWait = () => (arrivals === "random" ? -Math.log(uniform()) * interval : interval);

  const edit = replica => {
    replica.edits += 1;
    editAt.set(`${replica.doc}/${replica.device}/${replica.edits}`, performance.now());
    replica.marks.set(`d${replica.device}`, replica.edits);
    expected += devices - 1;
  };

  const start = performance.now() + 500;
  const stop = start + seconds * 1000;
  const timers = [];
  if (arrivals === "random") {
    for (const replica of replicas) {
      let due = start + nextWait();
      const tick = () => {
        if (performance.now() >= stop) return;
        edit(replica);
        due += nextWait();
        timers.push(setTimeout(tick, Math.max(0, due - performance.now())));
      };
      timers.push(setTimeout(tick, Math.max(0, due - performance.now())));
    }
  } else {
    // Device d of every document fires in the same callback.
    for (let device = 0; device < devices; device++) {
      let due = start + (interval * (device + 1)) / devices;
      const group = replicas.filter(r => r.device === device);
      const tick = () => {
        if (performance.now() >= stop) return;
        for (const replica of group) edit(replica);
        due += interval;
        timers.push(setTimeout(tick, Math.max(0, due - performance.now())));
      };
      timers.push(setTimeout(tick, Math.max(0, due - performance.now())));
    }
  }
  await new Promise(resolve => setTimeout(resolve, stop - performance.now() + 3000));
  for (const timer of timers) clearTimeout(timer);

  latencies.sort((a, b) => a - b);
  const pct = q => +latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))].toFixed(2);
  const edits = replicas.reduce((sum, r) => sum + r.edits, 0);
  console.log(
    `scenario: hocuspocus fan-out, ${docs} documents x ${devices} devices, ${rate} edits/s per device, ${seconds} s, arrivals ${arrivals}`,
  );
  console.log(
    `edit-to-device latency: n=${latencies.length} p50=${pct(0.5)}ms p95=${pct(0.95)}ms p99=${pct(0.99)}ms max=${pct(1)}ms`,
  );
  console.log(`edits: ${edits}, missing deliveries: ${expected - latencies.length}`);
  for (const replica of replicas) replica.provider.destroy();
  process.exit(0);
}
