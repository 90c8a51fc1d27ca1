// Ten stock automerge-repo devices editing one shared document, in one Node
// process, each with its own Repo and WebSocket: the shape of issue 13's
// measurement. Counts the frames each device sends and receives per edit,
// the edits delivered to every other device per second, and the fan-out
// latency (an edit's timestamp to its arrival on each other device).
//
// Each delivery's latency is also split in three, on the one clock the
// devices share: the sender's batching (the edit to the first frame its
// device sends after it); the transit (that frame leaving to the first
// moment any receiving device took in a frame after which it showed the
// edit: the server, the network and one turn of this process's event loop);
// and the receivers' share (from that moment to the edit showing on each
// device, which is mostly waiting while the other devices in this one Node
// process decode and apply the same change, one at a time). The batching
// and the receivers' share are what the clients cost whatever the server;
// their sum per delivery is the clients' floor.
//
// Usage: node js-fanout.mjs --url ws://127.0.0.1:PORT/v1/sync --server http://127.0.0.1:PORT \
//          [--devices 10] [--rate 20] [--seconds 10] [--no-auth] [--safe-send]
// With --no-auth the url is used as it is (the reference server); otherwise
// each device signs in as bench-0@example.com with the bench code.
import { Repo, cbor } from "@automerge/automerge-repo";
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket";
import { parseFlags } from "../flags.mjs";

const args = parseFlags();
const devices = Number(args.devices ?? 10);
const rate = Number(args.rate ?? 20);
const seconds = Number(args.seconds ?? 10);
const noAuth = args["no-auth"] === "true";

async function token() {
  const post = (path, body) =>
    fetch(`${args.server}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
  const email = "bench-0@example.com";
  const sent = await post("/v1/auth/otp", { email });
  if (sent.status !== 202) throw new Error(`code request answered ${sent.status}`);
  const verified = await post("/v1/auth/verify", { email, code: "123456", device_name: "js-fanout" });
  if (verified.status !== 200) throw new Error(`verify answered ${verified.status}`);
  return (await verified.json()).access_token;
}

// Counts frames at the adapter: what the device sends and what it receives.
class CountingAdapter extends WebSocketClientAdapter {
  up = 0;
  down = 0;
  upBytes = 0;
  downBytes = 0;
  // Edits made on this device whose first frame has not left yet.
  pendingEdits = [];
  // When the newest frame arrived.
  lastArrival = 0;
  send(message) {
    // With --safe-send, what cannot be sent is dropped (README, interop
    // notes): the stock send throws on a closing socket, which leaves the
    // document's handle outdated for good.
    const socket = this.socket;
    if (args["safe-send"] === "true" && !(socket && socket.readyState === socket.OPEN)) return;
    if (message.type === "sync" || message.type === "request") {
      const now = performance.now();
      for (const mark of this.pendingEdits) {
        leftAt.set(mark, now);
        clientDelays.push(now - editAt.get(mark));
      }
      this.pendingEdits = [];
      this.up += 1;
      // The frame as the stock adapter encodes it.
      this.upBytes += cbor.encode(message).byteLength;
    }
    return super.send(message);
  }
  receiveMessage(bytes) {
    this.lastArrival = performance.now();
    this.down += 1;
    this.downBytes += bytes.byteLength;
    return super.receiveMessage(bytes);
  }
  // A socket error on Node rethrows in the stock adapter; a benchmark run
  // should report, not crash.
  onError = () => {};
}

// From an edit to the first frame its device sends after it: the floor the
// stock client's own batching (up to 100 ms) sets under any server.
const clientDelays = [];
// mark -> when it was made, and when the first frame after it left its device.
const editAt = new Map();
const leftAt = new Map();
const peers = [];
for (let d = 0; d < devices; d++) {
  const url = noAuth ? args.url : `${args.url}?access_token=${await token()}`;
  const adapter = new CountingAdapter(url);
  const repo = new Repo({ network: [adapter], sharePolicy: async () => true });
  peers.push({ repo, adapter });
}
await Promise.all(peers.map(p => p.repo.networkSubsystem.whenReady()));

const first = peers[0].repo.create({ marks: {} });
await first.whenReady();
// Make sure the server has it before the others ask.
await new Promise(r => setTimeout(r, 500));
const handles = [first];
for (const peer of peers.slice(1)) {
  const handle = await peer.repo.find(first.url);
  await handle.whenReady();
  handles.push(handle);
}

// Every device watches for marks it has not seen.
const latencies = [];
// mark -> [when the receiving device last took in a frame, when the edit
// showed there], one pair per delivery.
const deliveries = new Map();
const seen = handles.map(() => new Set());
const deliveredTo = new Map(); // mark -> number of other devices that have it
handles.forEach((handle, d) => {
  handle.on("change", ({ doc }) => {
    const now = performance.now();
    const arrived = peers[d].adapter.lastArrival;
    for (const mark of Object.keys(doc.marks)) {
      if (seen[d].has(mark)) continue;
      seen[d].add(mark);
      if (!mark.startsWith(`${d}-`) && editAt.has(mark)) {
        const made = editAt.get(mark);
        latencies.push(now - made);
        if (!deliveries.has(mark)) deliveries.set(mark, []);
        deliveries.get(mark).push([arrived, now]);
        deliveredTo.set(mark, (deliveredTo.get(mark) ?? 0) + 1);
      }
    }
  });
});
for (let d = 0; d < devices; d++) for (const m of Object.keys(handles[d].doc().marks)) seen[d].add(m);

const before = peers.map(p => ({ ...p.adapter }));
const started = Date.now();
let edits = 0;
const interval = 1000 / rate;
await new Promise(resolve => {
  let n = 0;
  const tick = () => {
    const due = started + n * interval;
    if (Date.now() - started >= seconds * 1000) return resolve();
    const d = n % devices;
    const mark = `${d}-${n}`;
    editAt.set(mark, performance.now());
    handles[d].change(doc => {
      doc.marks[mark] = Date.now();
    });
    peers[d].adapter.pendingEdits.push(mark);
    edits += 1;
    n += 1;
    setTimeout(tick, Math.max(0, due + interval - Date.now()));
  };
  tick();
});
const editing = (Date.now() - started) / 1000;
// Let the last edits arrive (bounded).
const drainUntil = Date.now() + 5000;
while (Date.now() < drainUntil) {
  const complete = [...deliveredTo.values()].filter(c => c === devices - 1).length;
  if (complete >= edits) break;
  await new Promise(r => setTimeout(r, 50));
}
const total = key => peers.reduce((s, p, i) => s + p.adapter[key] - before[i][key], 0);
const [up, down, upBytes, downBytes] = ["up", "down", "upBytes", "downBytes"].map(total);
const complete = [...deliveredTo.values()].filter(c => c === devices - 1).length;
const transits = [];
const receives = [];
const clientFloors = [];
for (const [mark, pairs] of deliveries) {
  const left = leftAt.get(mark);
  const firstIn = Math.min(...pairs.map(([arrived]) => arrived));
  if (left === undefined || firstIn < left) continue;
  transits.push(firstIn - left);
  for (const [, shown] of pairs) {
    receives.push(shown - firstIn);
    clientFloors.push(left - editAt.get(mark) + (shown - firstIn));
  }
}
for (const list of [latencies, clientDelays, transits, receives, clientFloors]) list.sort((a, b) => a - b);
const pctOf = (list, q) =>
  list.length ? +list[Math.min(list.length - 1, Math.floor(q * list.length))].toFixed(1) : NaN;
const pct = q => pctOf(latencies, q);
console.log(
  JSON.stringify({
    devices,
    offered_edits_per_s: rate,
    edits,
    frames_up_per_edit: +(up / edits).toFixed(1),
    frames_down_per_edit: +(down / edits).toFixed(1),
    bytes_up_per_edit: Math.round(upBytes / edits),
    bytes_down_per_edit: Math.round(downBytes / edits),
    // The same per device: what one phone sends and receives for an edit.
    frames_per_edit_per_device: +((up + down) / edits / devices).toFixed(2),
    bytes_per_edit_per_device: Math.round((upBytes + downBytes) / edits / devices),
    delivered_edits_per_s: +(complete / editing).toFixed(1),
    delivered_everywhere: `${complete}/${edits}`,
    fanout_p50_ms: pct(0.5),
    fanout_p99_ms: pct(0.99),
    client_batching_p50_ms: pctOf(clientDelays, 0.5),
    client_batching_p99_ms: pctOf(clientDelays, 0.99),
    transit_p50_ms: pctOf(transits, 0.5),
    transit_p99_ms: pctOf(transits, 0.99),
    receivers_p50_ms: pctOf(receives, 0.5),
    receivers_p99_ms: pctOf(receives, 0.99),
    // Per delivery, the sender's batching plus the receivers' share.
    clients_floor_p50_ms: pctOf(clientFloors, 0.5),
    clients_floor_p99_ms: pctOf(clientFloors, 0.99),
  }),
);
process.exit(0);
