// The automerge-repo set-up: the stock WebSocket adapter (with the access
// token in the URL, the one way the stock adapter can authenticate),
// IndexedDB storage, and a BroadcastChannel between this browser's tabs.
//
// The server closes a socket when the token it opened with expires. The
// adapter reconnects by itself; `TokenWebSocketAdapter` only makes each
// reconnect use the newest token, so syncing goes on without a reload.

import { Repo, type PeerId, type PeerMetadata, cbor, initializeWasm } from "@automerge/automerge-repo/slim"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"
import { IndexedDBStorageAdapter } from "@automerge/automerge-repo-storage-indexeddb"
import { BroadcastChannelNetworkAdapter } from "@automerge/automerge-repo-network-broadcastchannel"
import wasmUrl from "@automerge/automerge/automerge.wasm?url"
import { currentToken } from "./session"
import { viewCacheName } from "./view-cache"
import { outboxName } from "./outbox"

let wasm: Promise<void> | undefined

/** Loads Automerge's WebAssembly once (streamed, so it compiles while it downloads). */
export function loadAutomerge(): Promise<void> {
  wasm ??= initializeWasm(wasmUrl).then(() => undefined)
  return wasm
}

export class TokenWebSocketAdapter extends WebSocketClientAdapter {
  /** The server's storage id, once it has answered `join`. */
  serverStorageId: string | undefined
  connected = false
  #wanted = true
  #onState: () => void

  constructor(onState: () => void) {
    super(socketUrl(), 1000)
    this.#onState = onState
  }

  connect(peerId: PeerId, peerMetadata?: PeerMetadata) {
    if (!this.#wanted) {
      // Remember who we are, so that `resume` can connect later.
      this.peerId = peerId
      this.peerMetadata = peerMetadata ?? {}
      return
    }
    // The stock adapter retries on a timer and, on each retry, drops the
    // previous socket's listeners without closing it: a retry while an
    // attempt is still under way (a slow upgrade on a busy machine) would
    // leave that socket open and unheard. Let the attempt finish instead.
    const state = this.socket?.readyState
    if (state === WebSocket.CONNECTING || state === WebSocket.OPEN) return
    // The stock adapter keeps one URL for its lifetime; each (re)connect
    // here takes the newest access token instead.
    ;(this as unknown as { url: string }).url = socketUrl()
    super.connect(peerId, peerMetadata)
    this.socket?.addEventListener("close", this.#closed)
  }

  /** Called when a socket closes (the token expired, the network dropped, the session ended). */
  onClosed: () => void = () => {}

  #closed = (event: Event) => {
    // Only the current socket's end matters.
    if (event.target !== this.socket) return
    this.connected = false
    this.#onState()
    this.onClosed()
  }

  peerCandidate(remotePeerId: PeerId, peerMetadata: PeerMetadata) {
    this.serverStorageId = peerMetadata?.storageId
    this.connected = true
    super.peerCandidate(remotePeerId, peerMetadata)
    this.#onState()
  }

  // The repo waits for every adapter to be ready before it asks the network
  // for a document it does not have. A paused adapter has nobody to ask, so
  // it is ready at once: documents missing offline are then unavailable
  // (and arrive later) instead of holding the whole list back.
  isReady(): boolean {
    return !this.#wanted || super.isReady()
  }

  whenReady(): Promise<void> {
    return this.#wanted ? super.whenReady() : Promise.resolve()
  }

  // The stock `send` throws when the socket is closing or closed, and the
  // repo calls it while applying an incoming message: the throw leaves that
  // document's handle with an outdated copy, and every later change to it
  // fails until a reload. What cannot be sent now is dropped instead; the
  // repo sends it again after the next connection (it starts each from the
  // shared heads).
  send(message: Parameters<WebSocketClientAdapter["send"]>[0]) {
    const socket = this.socket
    if (!socket || socket.readyState !== WebSocket.OPEN) return
    super.send(message)
  }

  // The server ends a connection with an `error` message and a close frame
  // (an expired token, a revoked session). Browsers report the close only
  // once the closing handshake finishes, which took two seconds against
  // actix; reconnecting on the `error` itself keeps the gap in syncing to
  // one round trip. Error messages are tiny, so only small frames are
  // looked at.
  receiveMessage(messageBytes: Uint8Array) {
    if (messageBytes.byteLength < 512) {
      let type: unknown
      try {
        type = (cbor.decode(new Uint8Array(messageBytes)) as { type?: unknown })?.type
      } catch {
        type = undefined
      }
      if (type === "error") {
        this.#restart()
        return
      }
    }
    super.receiveMessage(messageBytes)
  }

  #restart() {
    if (!this.socket || !this.peerId) return
    this.#drop()
    this.connected = false
    this.#onState()
    this.onClosed()
    if (this.#wanted) this.connect(this.peerId, this.peerMetadata)
  }

  /** Stops syncing (the browser went offline, or the user signs out). */
  pause() {
    this.#wanted = false
    this.connected = false
    this.#drop()
    this.#onState()
  }

  // Closes the current socket without the stock `disconnect()`, which
  // clears its retry timer but keeps the timer's id: from then on the stock
  // adapter believes a retry is scheduled and never reconnects after a
  // failed attempt (seen as a tab stuck "connecting" after coming back
  // online). Here the stock retry state is left alone; while paused, its
  // retries reach `connect` above and stop there.
  #drop() {
    const socket = this.socket
    if (!socket) return
    socket.removeEventListener("open", this.onOpen)
    socket.removeEventListener("close", this.onClose)
    socket.removeEventListener("message", this.onMessage)
    socket.removeEventListener("error", this.onError)
    socket.removeEventListener("close", this.#closed)
    socket.close()
    if (this.remotePeerId) this.emit("peer-disconnected", { peerId: this.remotePeerId })
    this.socket = undefined
  }

  /** Starts syncing again with the newest token. */
  resume() {
    if (this.#wanted) return
    this.#wanted = true
    if (this.peerId) this.connect(this.peerId, this.peerMetadata)
  }
}

function socketUrl(): string {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:"
  const token = currentToken() ?? ""
  return `${scheme}//${location.host}/v1/sync?access_token=${encodeURIComponent(token)}`
}

export function databaseName(userId: string): string {
  return `codeedex-${userId}`
}

export function openRepo(userId: string, online: boolean, onState: () => void) {
  const socket = new TokenWebSocketAdapter(onState)
  if (!online) socket.pause()
  const storage = new IndexedDBStorageAdapter(databaseName(userId))
  const repo = new Repo({
    network: [socket, new BroadcastChannelNetworkAdapter({ channelName: `codeedex-${userId}` })],
    storage,
  })
  return { repo, socket, storage }
}

/** Deletes this browser's copy of the user's documents. */
export async function deleteLocalData(userId: string, storage?: IndexedDBStorageAdapter): Promise<void> {
  // An open connection would hold the deletion back until the page closes.
  if (storage) {
    const db = (storage as unknown as { dbPromise: Promise<IDBDatabase> }).dbPromise
    ;(await db.catch(() => undefined))?.close()
  }
  const remove = (name: string) =>
    new Promise<void>(resolve => {
      const request = indexedDB.deleteDatabase(name)
      request.onsuccess = () => resolve()
      request.onerror = () => resolve()
      // Another tab still has it open; it is deleted when that tab closes.
      request.onblocked = () => resolve()
    })
  await Promise.all([remove(databaseName(userId)), remove(viewCacheName(userId)), remove(outboxName(userId))])
}
