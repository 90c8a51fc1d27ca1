// Ten stock automerge-repo devices editing one shared document, in one Node
// process, each with its own Repo and WebSocket: the shape of issue 13's
// measurement. Counts the frames each device sends and receives per edit,
// the edits delivered to every other device per second, and the fan-out
// latency (an edit's timestamp to its arrival on each other device).
//
// Usage: node js-fanout.mjs --url ws://127.0.0.1:PORT/v1/sync --server http://127.0.0.1:PORT \
//          [--devices 10] [--rate 20] [--seconds 10] [--no-auth]
// With --no-auth the url is used as it is (the reference server); otherwise
// each device signs in as bench-0@example.com with the bench code.
import { Repo } from "@automerge/automerge-repo";
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => {
    if (arg.startsWith("--")) {
      const next = all[i + 1];
      pairs.push([arg.slice(2), next && !next.startsWith("--") ? next : "true"]);
    }
    return pairs;
  }, []),
);
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
  send(message) {
    if (message.type === "sync" || message.type === "request") this.up += 1;
    return super.send(message);
  }
  receiveMessage(bytes) {
    this.down += 1;
    return super.receiveMessage(bytes);
  }
  // A socket error on Node rethrows in the stock adapter; a benchmark run
  // should report, not crash.
  onError = () => {};
}

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
const seen = handles.map(() => new Set());
const deliveredTo = new Map(); // mark -> number of other devices that have it
handles.forEach((handle, d) => {
  handle.on("change", ({ doc }) => {
    const now = Date.now();
    for (const [mark, at] of Object.entries(doc.marks)) {
      if (seen[d].has(mark)) continue;
      seen[d].add(mark);
      if (!mark.startsWith(`${d}-`)) {
        latencies.push(now - at);
        deliveredTo.set(mark, (deliveredTo.get(mark) ?? 0) + 1);
      }
    }
  });
});
for (let d = 0; d < devices; d++) for (const m of Object.keys(handles[d].doc().marks)) seen[d].add(m);

const before = peers.map(p => ({ up: p.adapter.up, down: p.adapter.down }));
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
    handles[d].change(doc => {
      doc.marks[mark] = Date.now();
    });
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
const up = peers.reduce((s, p, i) => s + p.adapter.up - before[i].up, 0);
const down = peers.reduce((s, p, i) => s + p.adapter.down - before[i].down, 0);
const complete = [...deliveredTo.values()].filter(c => c === devices - 1).length;
latencies.sort((a, b) => a - b);
const pct = q => latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] : NaN;
console.log(
  JSON.stringify({
    devices,
    offered_edits_per_s: rate,
    edits,
    frames_up_per_edit: +(up / edits).toFixed(1),
    frames_down_per_edit: +(down / edits).toFixed(1),
    delivered_edits_per_s: +(complete / editing).toFixed(1),
    delivered_everywhere: `${complete}/${edits}`,
    fanout_p50_ms: pct(0.5),
    fanout_p99_ms: pct(0.99),
  }),
);
process.exit(0);
