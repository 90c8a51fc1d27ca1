// Tasks as Automerge documents, laid out exactly as
// schema/src/task_document.rs describes, so that the CLI, REST and this app
// edit the same documents:
//
//   task: { title: Text, notes: Text, done: bool, due: "YYYY-MM-DD"|null,
//           priority: "none"|"low"|"medium"|"high", tags: { <tag>: true },
//           createdAt, updatedAt, completedAt: Date|null }
//   root: { tasks: { <documentId>: "automerge:<documentId>" } }
//
// Readers are lenient like the server's: a field of the wrong type reads as
// absent. Writers touch only the fields that change, and edit text with a
// character diff, so edits of different fields (or different parts of one
// title) on different devices all survive.

import {
  type AutomergeUrl,
  type DocHandle,
  type DocumentId,
  type Repo,
  Automerge as A,
} from "@automerge/automerge-repo/slim"

export type Priority = "none" | "low" | "medium" | "high"
export const PRIORITIES: Priority[] = ["none", "low", "medium", "high"]

export interface TaskDoc {
  title?: unknown
  notes?: unknown
  done?: unknown
  due?: unknown
  priority?: unknown
  tags?: unknown
  createdAt?: unknown
  updatedAt?: unknown
  completedAt?: unknown
}

export interface RootDoc {
  tasks?: Record<string, unknown>
}

export interface Task {
  id: DocumentId
  title: string
  notes: string
  done: boolean
  due: string | null
  priority: Priority
  tags: string[]
  createdAt: number
  updatedAt: number
}

export interface TaskFields {
  title: string
  notes: string
  due: string | null
  priority: Priority
  tags: string[]
}

const str = (v: unknown): string | undefined =>
  typeof v === "string" ? v : v instanceof A.ImmutableString ? v.val : undefined

const time = (v: unknown): number => (v instanceof Date ? v.getTime() : typeof v === "number" ? v : 0)

export function readTask(id: DocumentId, doc: TaskDoc | undefined): Task | undefined {
  if (!doc || doc.title === undefined) return undefined
  const title = (str(doc.title) ?? "").replace(/[\u0000-\u001f\u007f]/g, "").slice(0, 500)
  const due = str(doc.due)
  const priority = str(doc.priority)
  let tags: string[] = []
  if (Array.isArray(doc.tags)) tags = doc.tags.map(str).filter((t): t is string => !!t)
  else if (doc.tags && typeof doc.tags === "object") tags = Object.keys(doc.tags)
  const createdAt = time(doc.createdAt)
  return {
    id,
    title: title.trim() ? title : "(untitled)",
    notes: str(doc.notes) ?? "",
    done: doc.done === true,
    due: due && /^\d{4}-\d{2}-\d{2}$/.test(due) ? due : null,
    priority: PRIORITIES.includes(priority as Priority) ? (priority as Priority) : "none",
    tags: tags.sort(),
    createdAt,
    updatedAt: time(doc.updatedAt) || createdAt,
  }
}

/** Tags as typed: split on commas and spaces, lower-cased, without a leading #. */
export function parseTags(text: string): string[] {
  const tags = text
    .split(/[,\s]+/)
    .map(t => t.replace(/^#/, "").trim().toLowerCase())
    .filter(t => t.length > 0 && t.length <= 32)
  return [...new Set(tags)].sort()
}

export function createTask(repo: Repo, root: DocHandle<RootDoc>, fields: TaskFields): DocumentId {
  const now = new Date()
  const tags: Record<string, boolean> = {}
  for (const t of fields.tags) tags[t] = true
  const handle = repo.create<TaskDoc>({
    title: fields.title,
    notes: fields.notes,
    done: false,
    due: fields.due === null ? null : new A.ImmutableString(fields.due),
    priority: new A.ImmutableString(fields.priority),
    tags,
    createdAt: now,
    updatedAt: now,
    completedAt: null,
  })
  const id = handle.documentId
  root.change(d => {
    // The server creates `tasks` once; a device never does (two devices
    // creating it offline would hide each other's lists). It exists by the
    // time the root document has synced.
    if (!d.tasks) throw new Error("the task list has not synced yet")
    d.tasks[id] = new A.ImmutableString(handle.url)
  })
  return id
}

export function updateTask(handle: DocHandle<TaskDoc>, patch: Partial<TaskFields> & { done?: boolean }) {
  handle.change(d => {
    if (patch.title !== undefined && patch.title !== str(d.title)) {
      if (typeof d.title === "string") A.updateText(d, ["title"], patch.title)
      else d.title = patch.title
    }
    if (patch.notes !== undefined && patch.notes !== str(d.notes)) {
      if (typeof d.notes === "string") A.updateText(d, ["notes"], patch.notes)
      else d.notes = patch.notes
    }
    if (patch.due !== undefined && patch.due !== str(d.due)) {
      d.due = patch.due === null ? null : new A.ImmutableString(patch.due)
    }
    if (patch.priority !== undefined && patch.priority !== str(d.priority)) {
      d.priority = new A.ImmutableString(patch.priority)
    }
    if (patch.tags !== undefined) {
      if (!d.tags || typeof d.tags !== "object" || Array.isArray(d.tags)) d.tags = {}
      const map = d.tags as Record<string, boolean>
      for (const t of Object.keys(map)) if (!patch.tags.includes(t)) delete map[t]
      for (const t of patch.tags) if (map[t] !== true) map[t] = true
    }
    if (patch.done !== undefined && patch.done !== (d.done === true)) {
      d.done = patch.done
      d.completedAt = patch.done ? new Date() : null
    }
    d.updatedAt = new Date()
  })
}

export function unlistTask(root: DocHandle<RootDoc>, id: DocumentId) {
  root.change(d => {
    if (d.tasks && id in d.tasks) delete d.tasks[id]
  })
}

export function listedIds(root: RootDoc | undefined): DocumentId[] {
  const tasks = root?.tasks
  if (!tasks || typeof tasks !== "object") return []
  return Object.keys(tasks) as DocumentId[]
}

export function urlOf(id: DocumentId): AutomergeUrl {
  return `automerge:${id}` as AutomergeUrl
}

// Views -------------------------------------------------------------------

export type View = "open" | "today" | "overdue" | "done" | "all"

export function today(): string {
  const now = new Date()
  const m = String(now.getMonth() + 1).padStart(2, "0")
  const d = String(now.getDate()).padStart(2, "0")
  return `${now.getFullYear()}-${m}-${d}`
}

export function visible(tasks: Task[], view: View, tag: string | null, search: string): Task[] {
  const day = today()
  const needle = search.trim().toLowerCase()
  return tasks
    .filter(t => {
      switch (view) {
        case "open":
          if (t.done) return false
          break
        case "done":
          if (!t.done) return false
          break
        case "today":
          if (t.done || t.due !== day) return false
          break
        case "overdue":
          if (t.done || t.due === null || t.due >= day) return false
          break
        case "all":
          break
      }
      if (tag && !t.tags.includes(tag)) return false
      if (needle && !`${t.title}\n${t.notes}\n${t.tags.join(" ")}`.toLowerCase().includes(needle)) return false
      return true
    })
    .sort(
      (a, b) =>
        (a.due ?? "9999") .localeCompare(b.due ?? "9999") ||
        PRIORITIES.indexOf(b.priority) - PRIORITIES.indexOf(a.priority) ||
        a.createdAt - b.createdAt ||
        a.id.localeCompare(b.id),
    )
}
