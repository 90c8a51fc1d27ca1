// Deletions the server has not confirmed yet. Deleting a task unlists it
// from the root document, which syncs like any edit; the server also has to
// tombstone the task itself (REST lists it until then), and that takes a
// REST call. A deletion made offline waits here, in IndexedDB so that it
// survives a reload, and goes out whenever the server can be reached.

import type { DocumentId } from "@automerge/automerge-repo/slim"
import { ApiError } from "./api"
import { authed } from "./session"

const STORE = "deletions"

export function outboxName(userId: string): string {
  return `codeedex-outbox-${userId}`
}

function open(userId: string): Promise<IDBDatabase> {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(outboxName(userId), 1)
    request.onupgradeneeded = () => request.result.createObjectStore(STORE)
    request.onsuccess = () => resolve(request.result)
    request.onerror = () => reject(request.error)
  })
}

/** Runs one request in its own transaction; resolves once that has committed. */
function run<T>(db: IDBDatabase, mode: IDBTransactionMode, body: (store: IDBObjectStore) => IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    const transaction = db.transaction(STORE, mode)
    const request = body(transaction.objectStore(STORE))
    transaction.oncomplete = () => resolve(request.result)
    transaction.onerror = () => reject(transaction.error)
    transaction.onabort = () => reject(transaction.error)
  })
}

export class Outbox {
  #db: Promise<IDBDatabase>
  #sending = false
  #again = false
  #retry: number | undefined
  #closed = false

  constructor(userId: string) {
    this.#db = open(userId)
  }

  /** Queues the server-side deletion of a task; resolves once it is on disk. */
  async add(id: DocumentId): Promise<void> {
    await run(await this.#db, "readwrite", store => store.put(Date.now(), id))
  }

  /**
   * Sends every queued deletion. One that the server confirms, or that
   * names a task it no longer has, leaves the queue; anything else (no
   * network, a server error, an expired session) leaves the queue as it is
   * for the next attempt.
   */
  async send(): Promise<void> {
    if (this.#closed) return
    if (this.#sending) {
      this.#again = true
      return
    }
    this.#sending = true
    try {
      do {
        this.#again = false
        const db = await this.#db
        const ids = (await run(db, "readonly", store => store.getAllKeys())) as DocumentId[]
        for (const id of ids) {
          try {
            await authed("DELETE", `/v1/tasks/${encodeURIComponent(id)}`)
          } catch (e) {
            if (!refusedForGood(e)) {
              if (this.#closed) return
              // Offline, or the server could not do it now: the next
              // connection tries again, and so does a timer meanwhile.
              window.clearTimeout(this.#retry)
              this.#retry = window.setTimeout(() => void this.send(), 30_000)
              return
            }
          }
          await run(db, "readwrite", store => store.delete(id))
        }
      } while (this.#again)
    } catch {
      // IndexedDB unavailable (the data is being deleted): nothing to send.
    } finally {
      this.#sending = false
    }
  }

  async close() {
    this.#closed = true
    window.clearTimeout(this.#retry)
    ;(await this.#db.catch(() => undefined))?.close()
  }
}

/**
 * Whether the server refused a deletion in a way no retry changes: the
 * task is gone already (404) or the request itself is wrong. An expired
 * session (401), a rate limit (429) and server errors are worth retrying.
 */
function refusedForGood(error: unknown): boolean {
  if (!(error instanceof ApiError)) return false
  return error.status >= 400 && error.status < 500 && error.status !== 401 && error.status !== 408 && error.status !== 429
}
