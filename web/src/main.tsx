// Boot: find out who is signed in (a refresh through the HttpOnly cookie),
// open this browser's copy of their tasks, and keep syncing while online.
// Offline, the last signed-in user's tasks open from IndexedDB.

import { render } from "preact"
import { useEffect, useState } from "preact/hooks"
import type { DocumentId } from "@automerge/automerge-repo/slim"
import "./style.css"
import { ApiError, NetworkError, explain } from "./api"
import { expiresSoon, forget, freshToken, me, onToken, refresh, signOut, type UserView } from "./session"
import { deleteLocalData, loadAutomerge, openRepo } from "./sync"
import { Library } from "./library"
import { ViewCache } from "./view-cache"
import { Outbox } from "./outbox"
import { SignIn } from "./signin"
import { TasksApp } from "./app"

// Who was signed in last in this browser: no secret, only what is needed
// to open their local data when the network is off.
interface Profile {
  userId: string
  rootId: string
  label: string
}
const PROFILE_KEY = "codeedex.profile"
const sessionChannel = new BroadcastChannel("codeedex-session")

function savedProfile(): Profile | undefined {
  try {
    const p = JSON.parse(localStorage.getItem(PROFILE_KEY) ?? "null")
    return p && typeof p.userId === "string" && typeof p.rootId === "string" ? p : undefined
  } catch {
    return undefined
  }
}

type State =
  | { kind: "booting" }
  | { kind: "signed-out"; notice?: string }
  | { kind: "signed-in"; profile: Profile; library: Library; close: () => Promise<void> }
  | { kind: "failed"; message: string }

async function start(profile: Profile, online: boolean): Promise<State> {
  // The cached list is read while Automerge's WebAssembly compiles, so the
  // first paint waits for neither.
  const cache = new ViewCache(profile.userId)
  const cached = cache.read()
  await loadAutomerge()
  const library = { current: undefined as Library | undefined }
  const { repo, socket, storage } = openRepo(profile.userId, online, () => library.current?.changed())
  const lib = new Library(repo, socket, cache, new Outbox(profile.userId))
  library.current = lib
  const goOffline = () => {
    socket.pause()
    lib.changed()
  }
  const goOnline = () => {
    freshToken()
      .then(() => socket.resume())
      .catch(() => check())
    lib.changed()
  }
  window.addEventListener("offline", goOffline)
  window.addEventListener("online", goOnline)
  const stopToken = onToken(token => {
    if (token && navigator.onLine) socket.resume()
  })
  // Without a token (the app opened offline) or when a socket closes, ask
  // the cookie for a fresh token, backing off while the server cannot be
  // reached. A refused refresh means the session ended elsewhere: the
  // reload then signs out and deletes this browser's copy.
  let retry: number | undefined
  let delay = 1000
  let lastCheck = 0
  const check = () => {
    window.clearTimeout(retry)
    lastCheck = Date.now()
    refresh().then(
      () => {
        delay = 1000
        socket.resume()
      },
      e => {
        if (e instanceof ApiError && e.status === 401) location.reload()
        else {
          retry = window.setTimeout(check, delay)
          delay = Math.min(delay * 2, 30_000)
        }
      },
    )
  }
  socket.onClosed = () => {
    if (expiresSoon() || Date.now() - lastCheck > 30_000) check()
  }
  if (!online) check()
  void cached.then(tasks => lib.paintFromCache(tasks))
  void lib.openPersistently(profile.rootId as DocumentId)
  return {
    kind: "signed-in",
    profile,
    library: lib,
    close: async () => {
      window.removeEventListener("offline", goOffline)
      window.removeEventListener("online", goOnline)
      stopToken()
      window.clearTimeout(retry)
      socket.onClosed = () => {}
      socket.pause()
      await lib.close()
      await deleteLocalData(profile.userId, storage)
    },
  }
}

function profileOf(user: UserView): Profile {
  return {
    userId: user.id,
    rootId: user.root_document_id ?? "",
    label: user.email ?? user.phone ?? "you",
  }
}

async function boot(): Promise<State> {
  const saved = savedProfile()
  try {
    await refresh()
    const user = await me()
    const profile = profileOf(user)
    if (saved && saved.userId !== profile.userId) await deleteLocalData(saved.userId)
    localStorage.setItem(PROFILE_KEY, JSON.stringify(profile))
    return start(profile, navigator.onLine)
  } catch (e) {
    if (e instanceof NetworkError && saved) return start(saved, false)
    if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
      // The session ended elsewhere (signed out everywhere, revoked): this
      // browser's copy of the data goes with it.
      if (saved) {
        await deleteLocalData(saved.userId)
        localStorage.removeItem(PROFILE_KEY)
        return { kind: "signed-out", notice: "You were signed out. Sign in again to see your tasks." }
      }
      return { kind: "signed-out" }
    }
    if (e instanceof NetworkError) {
      return { kind: "signed-out", notice: "You are offline. Signing in needs the network." }
    }
    return { kind: "failed", message: explain(e) }
  }
}

function Root() {
  const [state, setState] = useState<State>({ kind: "booting" })
  useEffect(() => {
    void boot().then(setState)
  }, [])
  useEffect(() => {
    // Another tab signed out: follow it.
    const listener = (event: MessageEvent) => {
      if (event.data === "signed-out") location.reload()
    }
    sessionChannel.addEventListener("message", listener)
    return () => sessionChannel.removeEventListener("message", listener)
  }, [])

  switch (state.kind) {
    case "booting":
      return <p class="boot">Loading…</p>
    case "failed":
      return (
        <p class="error" role="alert">
          {state.message}
        </p>
      )
    case "signed-out":
      return (
        <SignIn
          notice={state.notice}
          onSignedIn={async user => {
            const fresh = user.root_document_id ? user : await me()
            const profile = profileOf(fresh)
            const saved = savedProfile()
            if (saved && saved.userId !== profile.userId) await deleteLocalData(saved.userId)
            localStorage.setItem(PROFILE_KEY, JSON.stringify(profile))
            setState(await start(profile, true))
          }}
        />
      )
    case "signed-in":
      return (
        <TasksApp
          library={state.library}
          who={state.profile.label}
          onSignOut={async scope => {
            // Stop syncing first: ending the session closes this tab's
            // socket, and a running sync would take that for a session
            // ended elsewhere and reload the page.
            await state.close()
            await signOut(scope)
            localStorage.removeItem(PROFILE_KEY)
            sessionStorage.clear()
            forget()
            sessionChannel.postMessage("signed-out")
            setState({ kind: "signed-out", notice: "You are signed out. This browser's copy of your tasks was deleted." })
          }}
        />
      )
  }
}

render(<Root />, document.getElementById("app")!)

if ("serviceWorker" in navigator) {
  navigator.serviceWorker.register("/sw.js").catch(e => console.warn("no offline support:", e))
}
