// The last task list this browser showed, kept in IndexedDB as one record
// so that the next start paints the whole list at once. Opening 1,000
// Automerge documents takes seconds; reading one record takes
// milliseconds. The documents still load behind it and replace what it
// shows; actions on a task wait for its document.

import type { Task } from "./tasks"

const STORE = "view"
const KEY = "tasks"

export function viewCacheName(userId: string): string {
  return `codeedex-view-${userId}`
}

function open(userId: string): Promise<IDBDatabase> {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(viewCacheName(userId), 1)
    request.onupgradeneeded = () => request.result.createObjectStore(STORE)
    request.onsuccess = () => resolve(request.result)
    request.onerror = () => reject(request.error)
  })
}

export class ViewCache {
  #db: Promise<IDBDatabase | undefined>

  constructor(userId: string) {
    this.#db = open(userId).catch(() => undefined)
  }

  async read(): Promise<Task[] | undefined> {
    const db = await this.#db
    if (!db) return undefined
    return new Promise(resolve => {
      const request = db.transaction(STORE).objectStore(STORE).get(KEY)
      request.onsuccess = () => resolve(Array.isArray(request.result) ? request.result : undefined)
      request.onerror = () => resolve(undefined)
    })
  }

  async write(tasks: Task[]) {
    const db = await this.#db
    if (!db) return
    db.transaction(STORE, "readwrite").objectStore(STORE).put(tasks, KEY)
  }

  async close() {
    ;(await this.#db)?.close()
  }
}
