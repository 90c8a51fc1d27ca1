// A stock automerge-repo client driven by line commands, for the Rust interop
// tests (tests/src/js_client.rs, tests/tests/interop.rs).
//
// Usage:
//   node client.mjs <ws-url> <storage> [--peer-id ID] [--ephemeral|--not-ephemeral]
//                   [--retry-ms MS] [--max-seconds S] [--ready-timeout-ms MS]
//                   [--stock-errors]
//
//   <ws-url>   ws://host:port/v1/sync?access_token=...
//   <storage>  "none" (in memory, ephemeral by default) or "fs:<dir>"
//              (NodeFSStorageAdapter in <dir>, not ephemeral by default)
//
// It builds `new Repo({ network: [new WebSocketClientAdapter(url)], storage,
// peerId, isEphemeral })` exactly as an application would, and reads one JSON
// command per line on stdin. Every command may carry a "tag" that is echoed in
// its answer. Everything it says is one JSON object per line on stdout:
//
//   {"event":"started","peerId":...}           the repo exists, the socket is opening
//   {"event":"ready","peerId":...,"serverPeerId":...}  the server answered `join` with `peer`
//   {"event":"peer-disconnected","peerId":...}
//   {"event":"socket-closed","code":N,"reason":"..."}  the server (or the network) closed the socket
//   {"event":"socket-error","message":"..."}   e.g. "Unexpected server response: 401"
//   {"event":"server-error","message":"..."}   the server sent an `error` message
//   {"event":"incoming","type":"doc-unavailable","documentId":...}  (doc-unavailable only)
//   {"event":"fatal","error":"..."}            then exit code 2
//   {"event":"watchdog"}                       --max-seconds elapsed, exit code 3
//
// Commands (stdin) and their answers:
//   {"cmd":"create","title":"T","notes":"N"}  -> {"event":"created","id","url","value","heads"}
//       A task document laid out as schema/src/task_document.rs describes.
//   {"cmd":"find","id":"<docId or automerge: url>","timeout_ms":10000}
//                                             -> {"event":"doc",...} | {"event":"unavailable","id"} | {"event":"error"}
//       An unavailable handle is kept: `wait` on it succeeds if the document arrives later.
//   {"cmd":"print","id":...}                  -> {"event":"doc","id","value","heads"}
//   {"cmd":"change","id":...,"field":"title","value":...}
//       title/notes: Automerge.updateText (character-level diff); anything
//       else is assigned; "tags.<t>" sets one tag. Also stamps updatedAt.
//                                             -> {"event":"changed","id","value","heads"}
//   {"cmd":"splice","id":...,"field":"title","index":0 | "end","delete":0,"insert":"x"}
//                                             -> {"event":"changed",...}
//   {"cmd":"forge","id":...,"title":"T"}      -> {"event":"forged","id","value"}
//       Makes a local document under an id this client was never given data
//       for (Repo.import with docId) and lets the repo push it with `sync`:
//       how a client would try to overwrite someone else's document.
//   {"cmd":"wait","id":...,"field":"title","equals":V | "contains":"s","timeout_ms":10000}
//                                             -> {"event":"matched",...} | {"event":"timeout","id","value"}
//   {"cmd":"broadcast","id":...,"message":{...}} -> {"event":"broadcast"}  (an `ephemeral` message; peers
//                                                print {"event":"ephemeral","id","senderId","message"})
//   {"cmd":"synced","id":...,"timeout_ms":10000} -> {"event":"synced",...} | {"event":"timeout","what":"synced"}
//       Waits until the heads the server reported for the document (sync info
//       under the server's storageId) equal the local heads.
//   {"cmd":"disconnect"}                      -> {"event":"disconnected"}  (WebSocketClientAdapter.disconnect())
//   {"cmd":"connect","timeout_ms":10000}      -> {"event":"ready",...} | {"event":"timeout","what":"connect"}
//   {"cmd":"drop"}                            -> {"event":"dropped"}  (terminates the TCP socket under the
//                                                adapter; the adapter reconnects by itself after --retry-ms)
//   {"cmd":"peers"}                           -> {"event":"peers","peers":[...]}
//   {"cmd":"exit"}                            -> {"event":"bye"}, exit code 0 (also on stdin EOF)
//
// Diagnostics (frames in and out, with types and document ids) go to stderr.
//
// Socket errors: by default this client behaves as the stock adapter does in
// a browser, where an error event is only logged (see the two patches under
// "network"); that is what the web app and every other interop test need.
// `--stock-errors` leaves the adapter exactly as it ships and installs no
// handler for uncaught exceptions, so the process fares as a plain Node
// application would: the adapter rethrows a refused upgrade (a 401 once the
// token in its URL expired) and Node ends the process with exit code 1.

import { Repo, cbor } from "@automerge/automerge-repo"
import * as A from "@automerge/automerge"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"
import { NodeFSStorageAdapter } from "@automerge/automerge-repo-storage-nodefs"
import { createInterface } from "node:readline"
import { randomBytes } from "node:crypto"

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n")
}

function diag(...parts) {
  const line = parts.map(p => (typeof p === "string" ? p : JSON.stringify(p))).join(" ")
  process.stderr.write(`[js ${new Date().toISOString().slice(11, 23)}] ${line}\n`)
}

function fatal(error) {
  const text = error?.stack ?? String(error)
  diag("fatal:", text)
  out({ event: "fatal", error: String(error?.message ?? error) })
  process.exit(2)
}

// ---- arguments ---------------------------------------------------------------

const argv = process.argv.slice(2)
const positional = []
const flags = {}
for (let i = 0; i < argv.length; i++) {
  const arg = argv[i]
  if (arg === "--ephemeral") flags.ephemeral = true
  else if (arg === "--not-ephemeral") flags.ephemeral = false
  else if (arg === "--stock-errors") flags.stockErrors = true
  else if (arg.startsWith("--")) flags[arg.slice(2)] = argv[++i]
  else positional.push(arg)
}
if (!flags.stockErrors) {
  process.on("uncaughtException", fatal)
  process.on("unhandledRejection", fatal)
}
if (positional.length !== 2) {
  process.stderr.write("usage: node client.mjs <ws-url> <none|fs:DIR> [--peer-id ID] [--ephemeral|--not-ephemeral] [--retry-ms MS] [--max-seconds S]\n")
  process.exit(64)
}
const [url, storageMode] = positional
const peerId = flags["peer-id"] ?? `js-${randomBytes(8).toString("hex")}`
const retryMs = Number(flags["retry-ms"] ?? 5000)
const maxSeconds = Number(flags["max-seconds"] ?? 120)

let storage
if (storageMode === "none") storage = undefined
else if (storageMode.startsWith("fs:")) storage = new NodeFSStorageAdapter(storageMode.slice(3))
else fatal(new Error(`unknown storage mode ${storageMode}`))

// NodeFSStorageAdapter writes files in place (open with truncation, then
// write), and the repo saves on a 100 ms throttle that `repo.flush()` does
// not wait for: exiting while such a save is under way leaves an empty
// snapshot file, which the next process loads as an empty document. Track
// the writes so that `exit` can wait for them.
const pendingWrites = new Set()
if (storage) {
  for (const method of ["save", "remove", "removeRange"]) {
    const stock = storage[method].bind(storage)
    storage[method] = (...args) => {
      const promise = stock(...args)
      pendingWrites.add(promise)
      promise.then(
        () => pendingWrites.delete(promise),
        () => pendingWrites.delete(promise),
      )
      return promise
    }
  }
}

// A bounded lifetime whatever the driver does.
setTimeout(() => {
  out({ event: "watchdog", seconds: maxSeconds })
  process.exit(3)
}, maxSeconds * 1000).unref()

// ---- network -----------------------------------------------------------------

const redacted = url.replace(/access_token=[^&]*/, "access_token=<redacted>")
const adapter = new WebSocketClientAdapter(url, retryMs)

function describe(message) {
  const { type, senderId, targetId, documentId } = message ?? {}
  const extra = {}
  if (message?.data instanceof Uint8Array) extra.bytes = message.data.byteLength
  if (type === "error") extra.message = message.message
  if (type === "join" || type === "peer") {
    extra.peerMetadata = message.peerMetadata
    extra.versions = message.supportedProtocolVersions ?? message.selectedProtocolVersion
  }
  return { type, senderId, targetId, documentId, ...extra }
}

// Observe the stock adapter without changing what it does: wrap its handlers
// before the repo connects it (connect() registers these properties).
const stockReceive = adapter.receiveMessage.bind(adapter)
adapter.receiveMessage = bytes => {
  let message
  try {
    message = cbor.decode(new Uint8Array(bytes))
  } catch (e) {
    diag("in: undecodable frame of", bytes.byteLength, "bytes:", String(e))
  }
  if (message) {
    diag("in:", describe(message))
    if (message.type === "error") out({ event: "server-error", message: message.message })
    if (message.type === "doc-unavailable") out({ event: "incoming", type: "doc-unavailable", documentId: message.documentId })
  }
  return stockReceive(bytes)
}
const stockSend = adapter.send.bind(adapter)
adapter.send = message => {
  diag("out:", describe(message))
  return stockSend(message)
}
const stockOnClose = adapter.onClose
adapter.onClose = event => {
  const code = event?.code
  const reason = event?.reason?.toString?.() ?? ""
  diag("socket closed:", { code, reason })
  out({ event: "socket-closed", code, reason })
  return stockOnClose(event)
}
const stockOnError = adapter.onError
adapter.onError = event => {
  const message = event?.error?.message ?? event?.message ?? "unknown"
  diag("socket error:", message)
  out({ event: "socket-error", message })
  if (flags.stockErrors) return stockOnError(event)
  // Imitates a browser. On Node, the stock handler throws anything but
  // ECONNREFUSED (for example a 401 on the upgrade), which ends the process;
  // in a browser the same error is only logged, and the adapter's retry
  // timer goes on. Report it instead of throwing. `--stock-errors` (and the
  // interop test of the unpatched adapter) shows what Node does without this.
  if (event?.error?.code === "ECONNREFUSED") return stockOnError(event)
}

// Imitates a browser, too. A reconnect (the adapter's retry timer) takes its
// listeners off the socket it replaces, which may still be connecting and
// fail later, for example when the network resets it. A browser ignores an
// error event nobody listens to; Node's EventEmitter throws it, which would
// end the process. Give every socket the adapter opens a listener of its
// own, as a browser would behave.
const stockConnect = adapter.connect.bind(adapter)
adapter.connect = (...args) => {
  const result = stockConnect(...args)
  const socket = adapter.socket
  if (!flags.stockErrors) {
    socket?.on?.("error", e => {
      if (socket !== adapter.socket) diag("error on a replaced socket:", String(e?.message ?? e))
    })
  }
  return result
}

diag("connecting to", redacted, "as", peerId, "storage", storageMode)

const isEphemeral = flags.ephemeral ?? storage === undefined
const repo = new Repo({ network: [adapter], storage, peerId, isEphemeral })

let serverPeerId
let serverStorageId
const readyWaiters = []
repo.networkSubsystem.on("peer", ({ peerId: remote, peerMetadata }) => {
  serverPeerId = remote
  serverStorageId = peerMetadata?.storageId
  diag("peer:", remote, peerMetadata)
  for (const resolve of readyWaiters.splice(0)) resolve()
  out({ event: "ready", peerId, serverPeerId: remote, serverMetadata: peerMetadata })
})
repo.networkSubsystem.on("peer-disconnected", ({ peerId: remote }) => {
  if (serverPeerId === remote) serverPeerId = undefined
  out({ event: "peer-disconnected", peerId: remote })
})
out({ event: "started", peerId, isEphemeral })

// ---- documents ---------------------------------------------------------------

const handles = new Map()

function docIdOf(id) {
  if (typeof id !== "string") throw new Error("missing id")
  return id.startsWith("automerge:") ? id.slice("automerge:".length) : id
}

function handleOf(id) {
  const handle = handles.get(docIdOf(id))
  if (!handle) throw new Error(`document ${id} was neither created nor found by this client`)
  return handle
}

function snapshot(handle) {
  const doc = handle.isReady() ? handle.doc() : undefined
  return {
    id: handle.documentId,
    url: handle.url,
    state: handle.state,
    value: doc === undefined ? null : JSON.parse(JSON.stringify(doc)),
    heads: doc === undefined ? [] : A.getHeads(doc),
  }
}

function getPath(value, path) {
  let current = value
  for (const key of path.split(".")) {
    if (current === null || typeof current !== "object") return undefined
    current = current[key]
  }
  return current
}

function matches(value, cmd) {
  const actual = getPath(value, cmd.field)
  if ("equals" in cmd) return JSON.stringify(actual) === JSON.stringify(cmd.equals)
  if ("contains" in cmd) return typeof actual === "string" && actual.includes(cmd.contains)
  throw new Error("wait needs equals or contains")
}

function track(handle) {
  if (handles.has(handle.documentId)) return
  handles.set(handle.documentId, handle)
  handle.on("ephemeral-message", ({ senderId, message }) => {
    out({ event: "ephemeral", id: handle.documentId, senderId, message })
  })
  handle.on("delete", () => out({ event: "deleted", id: handle.documentId }))
}

function newTask(title, notes) {
  const now = new Date()
  return {
    title,
    notes: notes ?? "",
    done: false,
    due: null,
    priority: "none",
    tags: {},
    createdAt: now,
    updatedAt: now,
    completedAt: null,
  }
}

function applyField(doc, field, value) {
  if (field === "title" || field === "notes") {
    if (typeof value !== "string") throw new Error(`${field} must be a string`)
    // Strings written from JS are collaborative text in Automerge 3.
    A.updateText(doc, [field], value)
  } else if (field.startsWith("tags.")) {
    if (!doc.tags) doc.tags = {}
    const tag = field.slice("tags.".length)
    if (value === null || value === false) delete doc.tags[tag]
    else doc.tags[tag] = true
  } else if (field === "done") {
    doc.done = Boolean(value)
    doc.completedAt = value ? new Date() : null
  } else {
    doc[field] = value
  }
  doc.updatedAt = new Date()
}

function withTimeout(promise, ms, what) {
  let timer
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(Object.assign(new Error(`timeout: ${what}`), { timeout: true })), ms)
    }),
  ]).finally(() => clearTimeout(timer))
}

const commands = {
  async create(cmd) {
    const handle = repo.create(newTask(cmd.title ?? "", cmd.notes))
    track(handle)
    return { event: "created", ...snapshot(handle) }
  },

  async find(cmd) {
    const id = docIdOf(cmd.id)
    const timeoutMs = cmd.timeout_ms ?? 10000
    try {
      // Keep unavailable handles too: doc-unavailable is not final, and a
      // later `wait` sees the document if the server syncs it afterwards.
      const handle = await repo.find(id, {
        allowableStates: ["ready", "unavailable"],
        signal: AbortSignal.timeout(timeoutMs),
      })
      track(handle)
      if (!handle.isReady()) return { event: "unavailable", id, state: handle.state }
      return { event: "doc", ...snapshot(handle) }
    } catch (e) {
      if (/unavailable/i.test(String(e?.message))) return { event: "unavailable", id }
      if (e?.name === "AbortError" || e?.name === "TimeoutError") return { event: "timeout", what: "find", id }
      return { event: "error", id, error: String(e?.message ?? e) }
    }
  },

  async print(cmd) {
    return { event: "doc", ...snapshot(handleOf(cmd.id)) }
  },

  async change(cmd) {
    const handle = handleOf(cmd.id)
    handle.change(doc => applyField(doc, cmd.field, cmd.value))
    return { event: "changed", ...snapshot(handle) }
  },

  async splice(cmd) {
    const handle = handleOf(cmd.id)
    handle.change(doc => {
      const index = cmd.index === "end" ? String(doc[cmd.field] ?? "").length : (cmd.index ?? 0)
      A.splice(doc, [cmd.field], index, cmd.delete ?? 0, cmd.insert ?? "")
      doc.updatedAt = new Date()
    })
    return { event: "changed", ...snapshot(handle) }
  },

  async forge(cmd) {
    const id = docIdOf(cmd.id)
    const binary = A.save(A.from(newTask(cmd.title ?? "forged")))
    const handle = repo.import(binary, { docId: id })
    if (!handle.isReady()) handle.doneLoading()
    track(handle)
    return { event: "forged", ...snapshot(handle) }
  },

  async wait(cmd) {
    const handle = handleOf(cmd.id)
    const timeoutMs = cmd.timeout_ms ?? 10000
    const check = () => {
      if (!handle.isReady()) return false
      return matches(JSON.parse(JSON.stringify(handle.doc())), cmd)
    }
    if (check()) return { event: "matched", ...snapshot(handle) }
    let listener
    let poll
    try {
      await withTimeout(
        new Promise(resolve => {
          listener = () => {
            if (check()) resolve()
          }
          handle.on("change", listener)
          // State changes (unavailable -> ready) are not "change" events.
          poll = setInterval(listener, 200)
        }),
        timeoutMs,
        "wait",
      )
      return { event: "matched", ...snapshot(handle) }
    } catch (e) {
      if (e?.timeout) return { event: "timeout", what: "wait", ...snapshot(handle) }
      throw e
    } finally {
      handle.off("change", listener)
      clearInterval(poll)
    }
  },

  async broadcast(cmd) {
    handleOf(cmd.id).broadcast(cmd.message)
    return { event: "broadcast" }
  },

  async synced(cmd) {
    const handle = handleOf(cmd.id)
    const timeoutMs = cmd.timeout_ms ?? 10000
    // The heads the server last reported in a sync message, against ours:
    // equal means the server has every local change of this document.
    const state = () => {
      const ours = handle.isReady() ? handle.heads() : undefined
      const theirs = serverStorageId ? handle.getSyncInfo(serverStorageId)?.lastHeads : undefined
      return { ours, theirs }
    }
    const same = () => {
      const { ours, theirs } = state()
      return ours !== undefined && theirs !== undefined && [...ours].sort().join() === [...theirs].sort().join()
    }
    let poll
    try {
      await withTimeout(
        new Promise(resolve => {
          const check = () => same() && resolve()
          check()
          poll = setInterval(check, 50)
        }),
        timeoutMs,
        "synced",
      )
      return { event: "synced", ...snapshot(handle) }
    } catch (e) {
      if (e?.timeout) return { event: "timeout", what: "synced", serverStorageId, ...state() }
      throw e
    } finally {
      clearInterval(poll)
    }
  },

  async disconnect() {
    adapter.disconnect()
    return { event: "disconnected" }
  },

  async connect(cmd) {
    const ready = new Promise(resolve => readyWaiters.push(resolve))
    adapter.connect(adapter.peerId ?? peerId, adapter.peerMetadata)
    try {
      await withTimeout(ready, cmd.timeout_ms ?? 10000, "connect")
      return { event: "connected", peerId, serverPeerId }
    } catch (e) {
      if (e?.timeout) return { event: "timeout", what: "connect" }
      throw e
    }
  },

  async drop() {
    // `ws` in Node: destroy the TCP connection without a close handshake.
    adapter.socket?.terminate?.()
    return { event: "dropped" }
  },

  async peers() {
    return { event: "peers", peers: repo.peers }
  },

  async exit() {
    await shutdown(0)
  },
}

let exiting = false
async function shutdown(code) {
  if (exiting) return
  exiting = true
  try {
    await withTimeout(repo.flush(), 3000, "flush")
    // Let throttled saves start, then wait for every write to finish.
    const deadline = Date.now() + 3000
    if (storage) do {
      await new Promise(resolve => setTimeout(resolve, 150))
      await Promise.allSettled([...pendingWrites])
    } while (pendingWrites.size > 0 && Date.now() < deadline)
  } catch (e) {
    diag("flush failed:", String(e?.message ?? e))
  }
  try {
    adapter.disconnect()
  } catch {
    // never connected
  }
  out({ event: "bye" })
  process.exit(code)
}

// Commands run one at a time, in order.
let queue = Promise.resolve()
const lines = createInterface({ input: process.stdin })
lines.on("line", line => {
  if (!line.trim()) return
  queue = queue.then(async () => {
    let cmd
    try {
      cmd = JSON.parse(line)
    } catch (e) {
      out({ event: "error", error: `not JSON: ${line}` })
      return
    }
    const handler = commands[cmd.cmd]
    if (!handler) {
      out({ event: "error", tag: cmd.tag, error: `unknown command ${cmd.cmd}` })
      return
    }
    try {
      const answer = await handler(cmd)
      if (answer) out({ ...answer, tag: cmd.tag })
    } catch (e) {
      diag(`command ${cmd.cmd} failed:`, e?.stack ?? String(e))
      out({ event: "error", tag: cmd.tag, cmd: cmd.cmd, error: String(e?.message ?? e) })
    }
  })
})
lines.on("close", () => {
  queue.then(() => shutdown(0))
})
