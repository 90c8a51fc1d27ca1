// The reference automerge-repo sync server, for side-by-side benchmarks: the
// stock Repo with the stock WebSocket server adapter and NodeFS storage, as
// the automerge-repo sync server runs it. No auth: it has none.
// Usage: PORT=18300 DATA=/tmp/ref node server.mjs
import { Repo } from "@automerge/automerge-repo";
import { WebSocketServerAdapter } from "@automerge/automerge-repo-network-websocket";
import { NodeFSStorageAdapter } from "@automerge/automerge-repo-storage-nodefs";
import { WebSocketServer } from "ws";

const port = Number(process.env.PORT ?? 18300);
const dir = process.env.DATA ?? ".reference-data";
const wss = new WebSocketServer({ host: "127.0.0.1", port });
new Repo({
  network: [new WebSocketServerAdapter(wss)],
  storage: new NodeFSStorageAdapter(dir),
  peerId: `reference-server-${process.pid}`,
  // The sync server does not announce documents to peers; peers ask.
  sharePolicy: async () => false,
});
wss.on("listening", () => console.log(`listening on 127.0.0.1:${port}`));
process.on("SIGTERM", () => process.exit(0));
