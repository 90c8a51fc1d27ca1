// The signed-in app: sync status, the new-task form, views and search, the
// task list with inline editing and history, and the devices panel.

import { useEffect, useMemo, useRef, useState } from "preact/hooks"
import type { DocumentId } from "@automerge/automerge-repo/slim"
import { explain } from "./api"
import { authed, currentSessionId } from "./session"
import type { Library, SyncState } from "./library"
import {
  PRIORITIES,
  type Priority,
  type Task,
  type View,
  createTask,
  parseTags,
  today,
  unlistTask,
  updateTask,
  visible,
} from "./tasks"

function useLibrary(library: Library): number {
  const [version, setVersion] = useState(0)
  useEffect(() => library.subscribe(() => setVersion(v => v + 1)), [library])
  return version
}

export function SyncStatus(props: { sync: SyncState; loaded: boolean }) {
  const { sync } = props
  let text: string
  if (!sync.online) text = "Offline. Changes are kept on this device and sync when you are back online."
  else if (!sync.connected) text = "Offline: connecting to the server…"
  else if (!props.loaded) text = "Syncing…"
  else if (sync.waiting > 0) text = `Syncing: ${sync.waiting} waiting`
  else text = "Up to date"
  const state = !sync.online || !sync.connected ? "offline" : sync.waiting > 0 ? "syncing" : "synced"
  return (
    <p role="status" class={`status ${state}`}>
      {text}
    </p>
  )
}

const VIEWS: { id: View; label: string }[] = [
  { id: "open", label: "Open" },
  { id: "today", label: "Today" },
  { id: "overdue", label: "Overdue" },
  { id: "done", label: "Done" },
  { id: "all", label: "All" },
]

const EMPTY: Record<View, string> = {
  open: "Nothing to do. Add a task above.",
  today: "Nothing due today.",
  overdue: "Nothing overdue.",
  done: "No completed tasks yet.",
  all: "No tasks yet. Add one above.",
}

export function TasksApp(props: {
  library: Library
  who: string
  onSignOut: (scope: "this" | "all") => void
}) {
  const { library } = props
  useLibrary(library)
  const [view, setView] = useState<View>("open")
  const [tag, setTag] = useState<string | null>(null)
  const [search, setSearch] = useState("")
  const [problem, setProblem] = useState<string | undefined>(undefined)
  const [editing, setEditing] = useState<DocumentId | null>(null)
  const [panel, setPanel] = useState<"tasks" | "devices">("tasks")
  const tasks = library.tasks()
  const shown = visible(tasks, view, tag, search)
  const tags = useMemo(() => [...new Set(tasks.flatMap(t => t.tags))].sort(), [tasks])

  // A task shown from the cached view may not have its document open yet.
  const handleOf = (id: DocumentId) => {
    const handle = library.handles.get(id)
    if (!handle?.isReady()) throw new Error("this task is still loading; try again in a moment")
    return handle
  }

  // Runs a change, then waits until it is in IndexedDB: only then does the
  // interface treat it as kept (the editor closes, the new-task field
  // clears), so a reload right after that point cannot lose it. Resolves
  // to whether it worked; a refused change is explained.
  const guard = async (action: () => DocumentId[] | Promise<DocumentId[]>): Promise<boolean> => {
    setProblem(undefined)
    let changed: DocumentId[]
    try {
      changed = await action()
    } catch (e) {
      setProblem(e instanceof Error ? `That did not work: ${e.message}.` : explain(e))
      return false
    }
    try {
      await library.persist(changed)
      return true
    } catch (e) {
      setProblem(`This change could not be saved on this device: ${e instanceof Error ? e.message : String(e)}.`)
      return false
    }
  }

  return (
    <div class="app">
      <header>
        <h1>Tasks</h1>
        <SyncStatus sync={library.sync} loaded={library.loaded} />
        <nav aria-label="Sections">
          <button type="button" aria-pressed={panel === "tasks"} onClick={() => setPanel("tasks")}>
            Tasks
          </button>
          <button type="button" aria-pressed={panel === "devices"} onClick={() => setPanel("devices")}>
            Devices
          </button>
        </nav>
      </header>
      {problem && (
        <p class="error" role="alert">
          {problem}
        </p>
      )}
      {library.openProblem && (
        <p class="error" role="alert">
          Your tasks could not be opened on this device ({library.openProblem}). Trying again…
        </p>
      )}
      {panel === "devices" ? (
        <Devices who={props.who} onSignOut={props.onSignOut} />
      ) : (
        <main>
          <NewTask
            disabled={!library.root}
            onAdd={fields =>
              guard(() => {
                const root = library.root
                if (!root) return []
                return [createTask(library.repo, root, fields), root.documentId]
              })
            }
          />
          <section aria-label="Filters" class="filters">
            <div role="group" aria-label="View" class="views">
              {VIEWS.map(v => (
                <button type="button" aria-pressed={view === v.id} onClick={() => setView(v.id)}>
                  {v.label}
                </button>
              ))}
            </div>
            <div class="row">
              <label for="tag-filter">Tag</label>
              <select
                id="tag-filter"
                value={tag ?? ""}
                onChange={e => setTag(e.currentTarget.value || null)}
              >
                <option value="">Any tag</option>
                {tags.map(t => (
                  <option value={t}>#{t}</option>
                ))}
              </select>
              <label for="search">Search</label>
              <input
                id="search"
                type="search"
                value={search}
                onInput={e => setSearch(e.currentTarget.value)}
              />
            </div>
          </section>
          {!library.loaded ? (
            <p class="empty">Loading your tasks…</p>
          ) : shown.length === 0 ? (
            <p class="empty">{search || tag ? "No task matches." : EMPTY[view]}</p>
          ) : null}
          <ul aria-label="Tasks" class="tasks" aria-busy={!library.live}>
            {shown.map(task => (
              <TaskItem
                key={task.id}
                task={task}
                editing={editing === task.id}
                onEdit={() => setEditing(task.id)}
                onClose={() => setEditing(null)}
                onToggle={done =>
                  void guard(() => {
                    updateTask(handleOf(task.id), { done })
                    return [task.id]
                  })
                }
                onSave={async patch => {
                  const kept = await guard(() => {
                    updateTask(handleOf(task.id), patch)
                    return [task.id]
                  })
                  if (kept) setEditing(null)
                }}
                onDelete={async () => {
                  const root = library.root
                  const kept = await guard(async () => {
                    if (!root) return []
                    // Queued first: a reload after the unlisting still
                    // tells the server, whenever it can be reached.
                    await library.outbox.add(task.id)
                    unlistTask(root, task.id)
                    return [root.documentId]
                  })
                  if (!kept) return
                  setEditing(null)
                  if (navigator.onLine) void library.outbox.send()
                }}
              />
            ))}
          </ul>
        </main>
      )}
    </div>
  )
}

function NewTask(props: {
  disabled: boolean
  onAdd: (fields: { title: string; notes: string; due: string | null; priority: Priority; tags: string[] }) => Promise<boolean>
}) {
  const [title, setTitle] = useState("")
  const [more, setMore] = useState(false)
  const [due, setDue] = useState("")
  const [priority, setPriority] = useState<Priority>("none")
  const [tags, setTags] = useState("")
  const [notes, setNotes] = useState("")
  const [saving, setSaving] = useState(false)
  return (
    <form
      class="new-task"
      aria-busy={saving}
      onSubmit={async e => {
        e.preventDefault()
        if (!title.trim() || saving) return
        setSaving(true)
        const kept = await props.onAdd({ title: title.trim(), notes, due: due || null, priority, tags: parseTags(tags) })
        setSaving(false)
        if (!kept) return
        setTitle("")
        setDue("")
        setPriority("none")
        setTags("")
        setNotes("")
      }}
    >
      <div class="row">
        <label for="new-title" class="visually-hidden">
          New task
        </label>
        <input
          id="new-title"
          placeholder="New task"
          maxLength={500}
          value={title}
          onInput={e => setTitle(e.currentTarget.value)}
        />
        <button type="submit" disabled={props.disabled || saving}>
          Add
        </button>
        <button type="button" aria-expanded={more} onClick={() => setMore(!more)}>
          Details
        </button>
      </div>
      {more && (
        <div class="details">
          <label for="new-due">Due</label>
          <input id="new-due" type="date" value={due} onInput={e => setDue(e.currentTarget.value)} />
          <label for="new-priority">Priority</label>
          <select
            id="new-priority"
            value={priority}
            onChange={e => setPriority(e.currentTarget.value as Priority)}
          >
            {PRIORITIES.map(p => (
              <option value={p}>{p}</option>
            ))}
          </select>
          <label for="new-tags">Tags</label>
          <input id="new-tags" value={tags} onInput={e => setTags(e.currentTarget.value)} />
          <label for="new-notes">Notes</label>
          <textarea id="new-notes" value={notes} onInput={e => setNotes(e.currentTarget.value)} />
        </div>
      )}
    </form>
  )
}

function TaskItem(props: {
  task: Task
  editing: boolean
  onEdit: () => void
  onClose: () => void
  onToggle: (done: boolean) => void
  onSave: (patch: { title: string; notes: string; due: string | null; priority: Priority; tags: string[] }) => Promise<void>
  onDelete: () => Promise<void>
}) {
  const { task } = props
  const box = `done-${task.id}`
  const overdue = !task.done && task.due !== null && task.due < today()
  // When the editor closes, the focus it held goes back to its Edit button
  // rather than to the top of the page.
  const editButton = useRef<HTMLButtonElement>(null)
  const wasEditing = useRef(props.editing)
  useEffect(() => {
    const active = document.activeElement
    if (wasEditing.current && !props.editing && (!active || active === document.body)) editButton.current?.focus()
    wasEditing.current = props.editing
  }, [props.editing])
  return (
    <li class={task.done ? "task done" : "task"}>
      <div class="row">
        <input
          id={box}
          type="checkbox"
          checked={task.done}
          onChange={e => props.onToggle(e.currentTarget.checked)}
        />
        <label for={box} class="title">
          {task.title}
        </label>
        <button
          type="button"
          ref={editButton}
          aria-label={`Edit ${task.title}`}
          aria-expanded={props.editing}
          onClick={props.editing ? props.onClose : props.onEdit}
        >
          Edit
        </button>
      </div>
      {(task.due || task.priority !== "none" || task.tags.length > 0 || task.notes) && (
        <p class="meta">
          {task.due && <span class={overdue ? "overdue" : ""}>{overdue ? "Overdue: " : "Due "}{task.due}</span>}
          {task.priority !== "none" && <span>{task.priority} priority</span>}
          {task.tags.map(t => (
            <span class="tag">#{t}</span>
          ))}
          {task.notes && <span class="notes">{task.notes}</span>}
        </p>
      )}
      {props.editing && <TaskEditor task={task} onSave={props.onSave} onCancel={props.onClose} onDelete={props.onDelete} />}
    </li>
  )
}

function TaskEditor(props: {
  task: Task
  onSave: (patch: { title: string; notes: string; due: string | null; priority: Priority; tags: string[] }) => Promise<void>
  onCancel: () => void
  onDelete: () => Promise<void>
}) {
  const { task } = props
  const [title, setTitle] = useState(task.title)
  const [notes, setNotes] = useState(task.notes)
  const [due, setDue] = useState(task.due ?? "")
  const [priority, setPriority] = useState<Priority>(task.priority)
  const [tags, setTags] = useState(task.tags.join(", "))
  const [history, setHistory] = useState(false)
  const [saving, setSaving] = useState(false)
  const id = task.id
  const titleField = useRef<HTMLInputElement>(null)
  useEffect(() => titleField.current?.focus(), [])
  // The editor stays open, its buttons disabled, until the change is in
  // IndexedDB; closing it is what tells the person the change is kept.
  const busy = (work: () => Promise<void>) => {
    setSaving(true)
    void work().finally(() => setSaving(false))
  }
  return (
    <form
      class="editor"
      aria-label={`Edit task ${task.title}`}
      aria-busy={saving}
      onSubmit={e => {
        e.preventDefault()
        if (!title.trim() || saving) return
        busy(() => props.onSave({ title: title.trim(), notes, due: due || null, priority, tags: parseTags(tags) }))
      }}
    >
      <label for={`title-${id}`}>Title</label>
      <input id={`title-${id}`} ref={titleField} value={title} maxLength={500} onInput={e => setTitle(e.currentTarget.value)} />
      <label for={`notes-${id}`}>Notes</label>
      <textarea id={`notes-${id}`} value={notes} onInput={e => setNotes(e.currentTarget.value)} />
      <label for={`due-${id}`}>Due</label>
      <input id={`due-${id}`} type="date" value={due} onInput={e => setDue(e.currentTarget.value)} />
      <label for={`priority-${id}`}>Priority</label>
      <select id={`priority-${id}`} value={priority} onChange={e => setPriority(e.currentTarget.value as Priority)}>
        {PRIORITIES.map(p => (
          <option value={p}>{p}</option>
        ))}
      </select>
      <label for={`tags-${id}`}>Tags</label>
      <input id={`tags-${id}`} value={tags} onInput={e => setTags(e.currentTarget.value)} />
      <div class="row">
        <button type="submit" disabled={saving}>
          Save
        </button>
        <button type="button" onClick={props.onCancel}>
          Cancel
        </button>
        <button type="button" aria-expanded={history} onClick={() => setHistory(!history)}>
          History
        </button>
        <button type="button" class="danger" disabled={saving} onClick={() => busy(props.onDelete)}>
          Delete
        </button>
      </div>
      {history && <History id={id} />}
    </form>
  )
}

interface HistoryEntry {
  seq: number
  at: string
  session_id?: string | null
  fields: string[]
}

function History(props: { id: DocumentId }) {
  const [entries, setEntries] = useState<HistoryEntry[] | undefined>(undefined)
  const [error, setError] = useState<string | undefined>(undefined)
  useEffect(() => {
    authed<{ entries: HistoryEntry[] }>("GET", `/v1/tasks/${props.id}/history`)
      .then(h => setEntries(h.entries))
      .catch(e => setError(explain(e)))
  }, [props.id])
  if (error) return <p class="error" role="alert">{error}</p>
  if (!entries) return <p>Loading history…</p>
  if (entries.length === 0) return <p>No history on the server yet.</p>
  const mine = currentSessionId()
  return (
    <ol class="history" aria-label="History">
      {entries
        .slice()
        .reverse()
        .map(e => (
          <li>
            {new Date(e.at).toLocaleString()}: {e.fields.length ? e.fields.join(", ") : "no visible change"} (
            {e.session_id === mine ? "this browser" : e.session_id ? "another device" : "the server"})
          </li>
        ))}
    </ol>
  )
}

interface SessionView {
  id: string
  device_name?: string | null
  created_at: string
  last_used_at: string
  current: boolean
}

function Devices(props: { who: string; onSignOut: (scope: "this" | "all") => void }) {
  const [sessions, setSessions] = useState<SessionView[] | undefined>(undefined)
  const [error, setError] = useState<string | undefined>(undefined)
  const load = () =>
    authed<{ sessions: SessionView[] }>("GET", "/v1/sessions")
      .then(s => {
        setSessions(s.sessions)
        setError(undefined)
      })
      .catch(e => setError(explain(e)))
  useEffect(() => {
    void load()
  }, [])
  return (
    <main class="devices">
      <h2>Signed in as {props.who}</h2>
      <div class="row">
        <button type="button" onClick={() => props.onSignOut("this")}>
          Sign out
        </button>
        <button type="button" class="danger" onClick={() => props.onSignOut("all")}>
          Sign out everywhere
        </button>
      </div>
      <h2>Devices</h2>
      {error && <p class="error" role="alert">{error}</p>}
      {!sessions && !error && <p>Loading devices…</p>}
      <ul aria-label="Devices">
        {sessions?.map(s => (
          <li>
            <span>
              {s.device_name || "Unnamed device"}
              {s.current ? " (this browser)" : ""}, last used {new Date(s.last_used_at).toLocaleString()}
            </span>
            {!s.current && (
              <button
                type="button"
                aria-label={`Revoke ${s.device_name || "unnamed device"}, last used ${new Date(s.last_used_at).toLocaleString()}`}
                onClick={() =>
                  authed("DELETE", `/v1/sessions/${s.id}`)
                    .then(load)
                    .catch(e => setError(explain(e)))
                }
              >
                Revoke
              </button>
            )}
          </li>
        ))}
      </ul>
    </main>
  )
}
