// The web app against the real server: sign-in, live sync between browsers,
// offline edits, the app shell offline, REST and CLI interplay, token expiry
// on an open socket, isolation between users, and where the refresh token is
// (not) kept.
import { expect, test } from "@playwright/test"
import { appendFileSync } from "node:fs"
import {
  CODE,
  CliDevice,
  addTask,
  closeAll,
  editTask,
  email,
  newSignedInPage,
  phone,
  restTasks,
  restToken,
  signIn,
  task,
  waitForOfflineShell,
} from "./helpers"

const APP = process.env.CODEEDEX_APP_URL!

test("sign in by email, stay signed in across a reload, sign out clears this browser's data", async ({ page }) => {
  await signIn(page, email(1))
  await addTask(page, "water the plants")
  await page.reload()
  await expect(page.getByLabel("New task")).toBeVisible()
  await expect(task(page, "water the plants")).toBeVisible()
  expect(await page.evaluate(async () => (await indexedDB.databases()).map(d => d.name))).toContainEqual(
    expect.stringMatching(/^codeedex-/),
  )

  await page.getByRole("button", { name: "Devices" }).click()
  await page.getByRole("button", { name: "Sign out", exact: true }).click()
  await expect(page.getByLabel("Email or phone")).toBeVisible()
  await expect
    .poll(() => page.evaluate(async () => (await indexedDB.databases()).map(d => d.name)))
    .not.toContainEqual(expect.stringMatching(/^codeedex-/))
  expect(await page.evaluate(() => localStorage.length)).toBe(0)
  // The cookie is gone too: a reload does not sign back in.
  await page.reload()
  await expect(page.getByLabel("Email or phone")).toBeVisible()
})

test("sign in by phone", async ({ page }) => {
  await signIn(page, phone(1))
  await addTask(page, "call the plumber")
  await page.getByRole("button", { name: "Devices" }).click()
  await expect(page.getByRole("heading", { name: `Signed in as ${phone(1)}` })).toBeVisible()
})

test("a wrong code is refused in plain words", async ({ page }) => {
  await page.goto("/")
  await page.getByLabel("Email or phone").fill(email(2))
  await page.getByRole("button", { name: "Send code" }).click()
  await page.getByLabel("Code").fill(CODE === "000000" ? "111111" : "000000")
  await page.getByRole("button", { name: "Sign in" }).click()
  await expect(page.getByRole("alert")).toHaveText(/code is wrong or has expired/)
  await expect(page.getByLabel("New task")).toHaveCount(0)
  // The right code still works afterwards.
  await page.getByLabel("Code").fill(CODE)
  await page.getByRole("button", { name: "Sign in" }).click()
  await expect(page.getByLabel("New task")).toBeVisible()
})

test("an identifier that is neither an email nor a phone number is explained", async ({ page }) => {
  await page.goto("/")
  await page.getByLabel("Email or phone").fill("not an address")
  await page.getByRole("button", { name: "Send code" }).click()
  await expect(page.getByRole("alert")).toHaveText(/not an email address or a phone number/)
})

test("two browsers of one user see an add, an edit and a completion live", async ({ browser }) => {
  const a = await newSignedInPage(browser, email(3))
  const b = await newSignedInPage(browser, email(3))
  await addTask(a.page, "buy milk")
  await expect(task(b.page, "buy milk")).toBeVisible()

  await editTask(a.page, "buy milk", { title: "buy oat milk" })
  await expect(task(b.page, "buy oat milk")).toBeVisible()

  // In the "All" view a completed task stays where it is (the default
  // "Open" view lets it go).
  await b.page.getByRole("button", { name: "All", exact: true }).click()
  await b.page.getByRole("checkbox", { name: "buy oat milk" }).check()
  await a.page.getByRole("button", { name: "Done", exact: true }).click()
  await expect(a.page.getByRole("checkbox", { name: "buy oat milk" })).toBeChecked()
  await a.page.getByRole("button", { name: "Open", exact: true }).click()
  await expect(task(a.page, "buy oat milk")).toHaveCount(0)
  await closeAll(a.context, b.context)
})

test("offline edits merge with another browser's edits, and REST agrees", async ({ browser }) => {
  const a = await newSignedInPage(browser, email(4))
  const b = await newSignedInPage(browser, email(4))
  await addTask(a.page, "draft plan")
  await expect(task(b.page, "draft plan")).toBeVisible()

  await a.context.setOffline(true)
  await expect(a.page.getByRole("status")).toContainText("Offline")
  await editTask(a.page, "draft plan", { title: "final plan" })
  await expect(task(a.page, "final plan")).toBeVisible()

  await editTask(b.page, "draft plan", { notes: "ask Sam first" })
  await addTask(b.page, "book the room")
  await expect(b.page.getByRole("status")).toContainText("Up to date")
  // A saw none of it while offline.
  await expect(task(a.page, "book the room")).toHaveCount(0)

  await a.context.setOffline(false)
  for (const page of [a.page, b.page]) {
    await expect(task(page, "final plan")).toContainText("ask Sam first")
    await expect(task(page, "book the room")).toBeVisible()
    await expect(page.getByRole("status")).toContainText("Up to date")
  }
  const token = await restToken(APP, email(4))
  await expect
    .poll(async () =>
      (await restTasks(APP, token)).map(t => `${t.title}|${t.notes}`).sort(),
    )
    .toEqual(["book the room|", "final plan|ask Sam first"])
  await closeAll(a.context, b.context)
})

test("after one visit the app opens and lists tasks with the network off", async ({ browser }) => {
  const { context, page } = await newSignedInPage(browser, email(5))
  await addTask(page, "read offline")
  await waitForOfflineShell(page)
  await context.setOffline(true)
  await page.reload()
  await expect(page.getByRole("status")).toContainText("Offline")
  await expect(task(page, "read offline")).toBeVisible()
  await addTask(page, "written offline")
  await context.setOffline(false)
  await expect(page.getByRole("status")).toContainText("Up to date")
  const token = await restToken(APP, email(5))
  await expect
    .poll(async () => (await restTasks(APP, token)).map(t => t.title).sort())
    .toEqual(["read offline", "written offline"])
  await context.close()
})

test("tasks made over REST and with the CLI appear live, and browser tasks reach both", async ({ page }) => {
  await signIn(page, email(6))
  const token = await restToken(APP, email(6))
  const created = await fetch(`${APP}/v1/tasks`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify({ title: "made over REST", tags: ["work"], priority: "high" }),
  })
  expect(created.status).toBe(201)
  await expect(task(page, "made over REST")).toContainText("#work")

  const cli = new CliDevice(APP)
  await cli.run(["login", "--email", email(6), "--device-name", "cli"], `${CODE}\n`)
  await cli.run(["add", "made with the CLI"])
  await cli.run(["sync"])
  await expect(task(page, "made with the CLI")).toBeVisible()

  await addTask(page, "made in the browser")
  await expect(page.getByRole("status")).toContainText("Up to date")
  await expect
    .poll(async () => (await restTasks(APP, token)).map(t => t.title).sort())
    .toEqual(["made in the browser", "made over REST", "made with the CLI"])
  await expect
    .poll(async () => {
      await cli.run(["sync"])
      return JSON.parse(await cli.run(["ls", "--all", "--json"])).map((t: any) => t.title).sort()
    })
    .toEqual(["made in the browser", "made over REST", "made with the CLI"])

  // An edit over REST shows live as well.
  const id = (await restTasks(APP, token)).find(t => t.title === "made in the browser").id
  const patched = await fetch(`${APP}/v1/tasks/${id}`, {
    method: "PATCH",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify({ done: true }),
  })
  expect(patched.status).toBe(200)
  await page.getByRole("button", { name: "All", exact: true }).click()
  await expect(page.getByRole("checkbox", { name: "made in the browser" })).toBeChecked()
})

test("another user's browser sees none of the first user's tasks", async ({ browser }) => {
  const a = await newSignedInPage(browser, email(7))
  await addTask(a.page, "private to seven")
  const b = await newSignedInPage(browser, email(8))
  await addTask(b.page, "eight's own")
  await b.page.getByRole("button", { name: "All", exact: true }).click()
  await expect(b.page.getByRole("listitem")).toHaveCount(1)
  await expect(task(b.page, "private to seven")).toHaveCount(0)
  const token = await restToken(APP, email(8))
  expect((await restTasks(APP, token)).map(t => t.title)).toEqual(["eight's own"])
  await closeAll(a.context, b.context)
})

test("the refresh token is never readable by the page", async ({ page, context }) => {
  const socketUrls: string[] = []
  page.on("websocket", ws => socketUrls.push(ws.url()))
  await signIn(page, email(9))
  await addTask(page, "secret keeping")
  const cookies = await context.cookies()
  const refresh = cookies.find(c => c.name === "codeedex_refresh")
  expect(refresh, "the browser holds the refresh cookie").toBeTruthy()
  expect(refresh!.httpOnly).toBe(true)
  expect(refresh!.sameSite).toBe("Strict")
  const token = refresh!.value
  expect(token.length).toBeGreaterThan(20)
  const seen = await page.evaluate(async secret => {
    const places: string[] = []
    if (document.cookie.includes(secret)) places.push("document.cookie")
    for (const store of [localStorage, sessionStorage]) {
      for (let i = 0; i < store.length; i++) {
        const key = store.key(i)!
        if (key.includes(secret) || (store.getItem(key) ?? "").includes(secret)) places.push("web storage")
      }
    }
    const bytes = new TextEncoder().encode(secret)
    const contains = (value: unknown): boolean => {
      if (typeof value === "string") return value.includes(secret)
      if (value instanceof Uint8Array) {
        outer: for (let i = 0; i + bytes.length <= value.length; i++) {
          for (let j = 0; j < bytes.length; j++) if (value[i + j] !== bytes[j]) continue outer
          return true
        }
        return false
      }
      if (value instanceof ArrayBuffer) return contains(new Uint8Array(value))
      if (Array.isArray(value)) return value.some(contains)
      if (value && typeof value === "object") return Object.values(value).some(contains)
      return false
    }
    for (const info of await indexedDB.databases()) {
      const db: IDBDatabase = await new Promise((resolve, reject) => {
        const r = indexedDB.open(info.name!)
        r.onsuccess = () => resolve(r.result)
        r.onerror = () => reject(r.error)
      })
      for (const name of Array.from(db.objectStoreNames)) {
        const all: unknown[] = await new Promise((resolve, reject) => {
          const r = db.transaction(name).objectStore(name).getAll()
          r.onsuccess = () => resolve(r.result)
          r.onerror = () => reject(r.error)
        })
        if (contains(all)) places.push(`IndexedDB ${info.name}/${name}`)
      }
      db.close()
    }
    return places
  }, token)
  expect(seen).toEqual([])
  // The harness then checks that neither token appears in the server's log.
  const access = socketUrls.map(u => new URL(u).searchParams.get("access_token")).find(Boolean)
  expect(access, "the sync socket carried an access token").toBeTruthy()
  if (process.env.CODEEDEX_SECRETS_FILE) {
    appendFileSync(process.env.CODEEDEX_SECRETS_FILE, `${token}\n${access}\n`)
  }
})

test("the browser session endpoints refuse requests without the CSRF header or from another origin", async ({ request }) => {
  const bare = await request.post("/v1/browser/refresh")
  expect(bare.status()).toBe(403)
  const foreign = await request.post("/v1/browser/refresh", {
    headers: { "x-codeedex-csrf": "1", origin: "https://evil.example" },
  })
  expect(foreign.status()).toBe(403)
  const page = await request.get("/")
  expect(page.headers()["content-security-policy"]).toContain("frame-ancestors 'none'")
  expect(page.headers()["content-security-policy"]).not.toContain("unsafe-inline")
  expect(page.headers()["x-content-type-options"]).toBe("nosniff")
  expect(page.headers()["cache-control"]).toBe("no-cache")
})

test("views, tag filter and search pick the right tasks; history lists the edits", async ({ page }) => {
  await signIn(page, email(10))
  const day = (offset: number) => {
    const t = new Date()
    t.setDate(t.getDate() + offset)
    return `${t.getFullYear()}-${String(t.getMonth() + 1).padStart(2, "0")}-${String(t.getDate()).padStart(2, "0")}`
  }
  const add = async (title: string, due: string, tags: string) => {
    await page.getByRole("button", { name: "Details" }).click()
    await page.getByLabel("New task").fill(title)
    if (due) await page.getByLabel("Due").fill(due)
    if (tags) await page.getByLabel("Tags").fill(tags)
    await page.getByRole("button", { name: "Add", exact: true }).click()
    await expect(task(page, title)).toBeVisible()
    await page.getByRole("button", { name: "Details" }).click()
  }
  await add("pay rent", day(0), "home")
  await add("renew passport", day(-2), "admin")
  await add("plan trip", day(5), "home")
  // Checked in the "All" view, where a completed task stays on screen.
  await page.getByRole("button", { name: "All", exact: true }).click()
  await page.getByRole("checkbox", { name: "plan trip" }).check()
  const shown = async () =>
    (await page.getByRole("list", { name: "Tasks" }).getByRole("checkbox").all()).length
  await page.getByRole("button", { name: "Today", exact: true }).click()
  await expect(task(page, "pay rent")).toBeVisible()
  expect(await shown()).toBe(1)
  await page.getByRole("button", { name: "Overdue", exact: true }).click()
  await expect(task(page, "renew passport")).toBeVisible()
  expect(await shown()).toBe(1)
  await page.getByRole("button", { name: "Done", exact: true }).click()
  await expect(task(page, "plan trip")).toBeVisible()
  expect(await shown()).toBe(1)
  await page.getByRole("button", { name: "All", exact: true }).click()
  await page.getByLabel("Tag").selectOption("home")
  await expect(task(page, "renew passport")).toHaveCount(0)
  await expect(task(page, "pay rent")).toBeVisible()
  await expect(task(page, "plan trip")).toBeVisible()
  await page.getByLabel("Tag").selectOption("")
  await page.getByLabel("Search").fill("passport")
  await expect(task(page, "pay rent")).toHaveCount(0)
  await expect(task(page, "renew passport")).toBeVisible()

  await page.getByRole("button", { name: "Edit renew passport", exact: true }).click()
  await page.getByRole("button", { name: "History" }).click()
  await expect(page.getByRole("list", { name: "History" }).getByRole("listitem")).not.toHaveCount(0)
  await expect(page.getByRole("list", { name: "History" })).toContainText("title")
})

test("signing out everywhere ends the other browser's session too", async ({ browser }) => {
  const a = await newSignedInPage(browser, email(11))
  const b = await newSignedInPage(browser, email(11))
  await addTask(a.page, "shared list")
  await expect(task(b.page, "shared list")).toBeVisible()
  await a.page.getByRole("button", { name: "Devices" }).click()
  await expect(a.page.getByRole("list", { name: "Devices" }).getByRole("listitem")).toHaveCount(2)
  await a.page.getByRole("button", { name: "Sign out everywhere" }).click()
  await expect(a.page.getByLabel("Email or phone")).toBeVisible()
  // B's session is gone: the server closes its socket, B finds its
  // session ended, signs itself out and deletes its copy, with no reload
  // by the test.
  await expect(b.page.getByLabel("Email or phone")).toBeVisible()
  await expect(b.page.getByText("You were signed out.")).toBeVisible()
  await expect
    .poll(() => b.page.evaluate(async () => (await indexedDB.databases()).map(d => d.name)))
    .not.toContainEqual(expect.stringMatching(/^codeedex-/))
  await closeAll(a.context, b.context)
})
