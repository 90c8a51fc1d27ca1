// The signed-in user's tasks in this browser: the root document, one handle
// per listed task, and what the interface shows (tasks and sync status),
// recomputed when any of them changes.

import type { DocHandle, DocumentId, Repo } from "@automerge/automerge-repo/slim"
import { type RootDoc, type Task, type TaskDoc, listedIds, readTask, urlOf } from "./tasks"
import type { TokenWebSocketAdapter } from "./sync"
import type { ViewCache } from "./view-cache"
import type { Outbox } from "./outbox"

export interface SyncState {
  online: boolean
  connected: boolean
  /** Documents with local changes the server has not confirmed. */
  waiting: number
}

export class Library {
  root: DocHandle<RootDoc> | undefined
  readonly handles = new Map<DocumentId, DocHandle<TaskDoc>>()
  #tasks = new Map<DocumentId, Task>()
  #listeners = new Set<() => void>()
  #scheduled = false
  #syncTimer: number | undefined
  loaded = false
  /** Why the task list could not be opened, while it cannot. */
  openProblem: string | undefined
  sync: SyncState = { online: navigator.onLine, connected: false, waiting: 0 }

  #cache: ViewCache
  #cacheTimer: number | undefined
  /** True once the list reflects the documents, not only the cached view. */
  #live = false
  /** Local changes whose write to IndexedDB has not finished. */
  #writing = 0
  #closed = false

  constructor(
    readonly repo: Repo,
    readonly socket: TokenWebSocketAdapter,
    cache: ViewCache,
    /** Deletions the server has yet to confirm; sent at each connection. */
    readonly outbox: Outbox,
  ) {
    this.#syncTimer = window.setInterval(() => this.#measureSync(), 500)
    this.#cache = cache
    // A page that is closed or hidden keeps the newest list.
    window.addEventListener("pagehide", this.#saveNow)
    window.addEventListener("beforeunload", this.#holdUnload)
  }

  /** Whether the list shows the documents themselves, not the cached view. */
  get live(): boolean {
    return this.#live
  }

  /** Whether a change made here is still on its way to IndexedDB. */
  get saving(): boolean {
    return this.#writing > 0
  }

  /**
   * Writes the named documents to IndexedDB now and resolves once the
   * write has committed. The repo would save them by itself a little later,
   * but a reload or a closed tab in between loses a change it has not saved,
   * so the interface says a change is kept only after this resolves.
   */
  async persist(ids: DocumentId[]): Promise<void> {
    this.#writing++
    try {
      await this.repo.flush(ids)
    } finally {
      this.#writing--
    }
  }

  // A page closed while a write is still in flight would lose it: the
  // browser asks the person to stay (it shows its own wording).
  #holdUnload = (event: BeforeUnloadEvent) => {
    if (this.#writing === 0) return
    event.preventDefault()
    event.returnValue = ""
  }

  #saveNow = () => {
    if (!this.#live) return
    window.clearTimeout(this.#cacheTimer)
    void this.#cache.write(this.tasks())
  }

  /** Shows the last list this browser saw while the documents load. */
  paintFromCache(cached: Task[] | undefined) {
    if (!cached || this.#live) return
    for (const task of cached) if (!this.#tasks.has(task.id)) this.#tasks.set(task.id, task)
    this.loaded = true
    this.changed()
  }

  #saveView() {
    window.clearTimeout(this.#cacheTimer)
    this.#cacheTimer = window.setTimeout(this.#saveNow, 300)
  }

  subscribe(listener: () => void): () => void {
    this.#listeners.add(listener)
    return () => this.#listeners.delete(listener)
  }

  tasks(): Task[] {
    return [...this.#tasks.values()]
  }

  /** Coalesces bursts of changes into one render per frame. */
  changed = () => {
    if (this.#live) this.#saveView()
    if (this.#scheduled) return
    this.#scheduled = true
    requestAnimationFrame(() => {
      this.#scheduled = false
      for (const l of this.#listeners) l()
    })
  }

  /**
   * Opens the task list, trying again with a growing pause while it cannot
   * be opened (its document not yet on this device and the server out of
   * reach, or storage failing); the interface says why meanwhile.
   */
  async openPersistently(rootId: DocumentId) {
    let pause = 1000
    for (;;) {
      try {
        await this.open(rootId)
        this.openProblem = undefined
        this.changed()
        return
      } catch (e) {
        console.error("cannot open the task list", e)
        this.openProblem = e instanceof Error ? e.message : String(e)
        this.changed()
      }
      if (this.#closed) return
      await new Promise(resolve => window.setTimeout(resolve, pause))
      pause = Math.min(pause * 2, 30_000)
    }
  }

  async open(rootId: DocumentId) {
    const root = await this.repo.find<RootDoc>(urlOf(rootId))
    this.root = root
    root.on("change", () => this.#relist())
    await this.#relist()
    this.#live = true
    this.loaded = true
    this.#measureSync()
    this.changed()
  }

  async #relist() {
    const ids = listedIds(this.root?.doc())
    const wanted = new Set(ids)
    for (const id of [...this.handles.keys()]) {
      if (!wanted.has(id)) this.handles.delete(id)
    }
    // Tasks shown from the cached view that the list no longer names go too.
    for (const id of [...this.#tasks.keys()]) {
      if (!wanted.has(id)) this.#tasks.delete(id)
    }
    const fresh = ids.filter(id => !this.handles.has(id))
    await Promise.all(fresh.map(id => this.#track(id)))
    this.changed()
  }

  async #track(id: DocumentId) {
    let handle: DocHandle<TaskDoc>
    try {
      // A task listed by another device may not have reached this one yet:
      // keep the handle and show the task when its document arrives.
      handle = await this.repo.find<TaskDoc>(urlOf(id), {
        allowableStates: ["ready", "unavailable"],
      })
    } catch {
      return
    }
    if (!this.root || !listedIds(this.root.doc()).includes(id)) return
    this.handles.set(id, handle)
    const read = () => {
      const task = handle.isReady() ? readTask(id, handle.doc()) : undefined
      if (task) this.#tasks.set(id, task)
      else this.#tasks.delete(id)
      this.changed()
    }
    handle.on("change", read)
    // A document that was unavailable when asked for (the list named it
    // before its own changes reached the server) becomes ready when the
    // server sends it later, without a "change" event.
    if (!handle.isReady()) void handle.whenReady().then(read, () => undefined)
    read()
  }

  #measureSync() {
    const online = navigator.onLine
    const connected = online && this.socket.connected
    const server = this.socket.serverStorageId
    let waiting = 0
    const all: DocHandle<unknown>[] = [...this.handles.values()]
    if (this.root) all.push(this.root)
    for (const handle of all) {
      if (!handle.isReady()) continue
      const theirs = server ? handle.getSyncInfo(server as never)?.lastHeads : undefined
      const ours = handle.heads()
      if (!theirs || !sameHeads(ours, theirs)) waiting++
    }
    const next = { online, connected, waiting }
    // Connected again: the server can be reached, and a token is fresh.
    if (connected && !this.sync.connected) void this.outbox.send()
    if (
      next.online !== this.sync.online ||
      next.connected !== this.sync.connected ||
      next.waiting !== this.sync.waiting
    ) {
      this.sync = next
      this.changed()
    }
  }

  async close() {
    this.#closed = true
    window.removeEventListener("pagehide", this.#saveNow)
    window.removeEventListener("beforeunload", this.#holdUnload)
    window.clearInterval(this.#syncTimer)
    window.clearTimeout(this.#cacheTimer)
    this.#listeners.clear()
    await this.#cache.close()
    await this.outbox.close()
  }
}

function sameHeads(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false
  const set = new Set(a)
  return b.every(h => set.has(h))
}
