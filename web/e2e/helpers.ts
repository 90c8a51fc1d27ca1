// Shared steps of the browser tests. Elements are found by role and label
// only, as a person using a screen reader would find them.
import { type Browser, type BrowserContext, type Page, expect } from "@playwright/test"
import { spawn } from "node:child_process"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"

/** The fixed code the test server accepts for the test identities. */
export const CODE = process.env.CODEEDEX_TEST_CODE ?? "246810"

/**
 * A test identity: the server under test has fixed codes for
 * web1..web40@example.com and +14155552601..+14155552640.
 */
export const email = (n: number) => `web${n}@example.com`
export const phone = (n: number) => `+1415555${2600 + n}`

export async function signIn(page: Page, identifier: string) {
  await page.goto("/")
  await page.getByLabel("Email or phone").fill(identifier)
  await page.getByRole("button", { name: "Send code" }).click()
  await page.getByLabel("Code").fill(CODE)
  await page.getByRole("button", { name: "Sign in" }).click()
  await expect(page.getByLabel("New task")).toBeVisible()
  await expect(page.getByRole("status")).toContainText("Up to date")
}

export async function newSignedInPage(browser: Browser, identifier: string, baseURL?: string) {
  const context = await browser.newContext(baseURL ? { baseURL } : {})
  const page = await context.newPage()
  reportPageErrors(page)
  await signIn(page, identifier)
  return { context, page }
}

/**
 * Prints what the page reports as errors (uncaught exceptions, console
 * errors other than requests refused by an offline network), so that a
 * failing test's output says what went wrong inside the app.
 */
export function reportPageErrors(page: Page) {
  page.on("pageerror", e => console.log(`page error: ${e.message}`))
  page.on("console", m => {
    // Socket URLs carry an access token: it is left out.
    const text = m.text().replace(/access_token=[^'"\s&]*/g, "access_token=…")
    if (m.type() === "error" && !text.startsWith("Failed to load resource")) console.log(`page console: ${text}`)
  })
}

/** Adds a task and waits until the app has kept it (the field clears once it is in IndexedDB). */
export async function addTask(page: Page, title: string) {
  await page.getByLabel("New task").fill(title)
  await page.getByRole("button", { name: "Add", exact: true }).click()
  await expect(task(page, title)).toBeVisible()
  await expect(page.getByLabel("New task")).toHaveValue("")
}

/** The list item of the task whose checkbox is named `title`. */
export function task(page: Page, title: string) {
  return page.getByRole("listitem").filter({ has: page.getByRole("checkbox", { name: title, exact: true }) })
}

export async function editTask(page: Page, title: string, fields: { title?: string; notes?: string }) {
  await page.getByRole("button", { name: `Edit ${title}`, exact: true }).click()
  const form = page.getByRole("form", { name: `Edit task ${title}` })
  if (fields.title !== undefined) await form.getByLabel("Title").fill(fields.title)
  if (fields.notes !== undefined) await form.getByLabel("Notes").fill(fields.notes)
  await form.getByRole("button", { name: "Save" }).click()
  // The editor closes once the change is in IndexedDB. (Its name follows
  // the title, which changes on Save: any editor is looked for.)
  await expect(page.getByRole("form", { name: /^Edit task / })).toHaveCount(0)
}

/** Waits until the service worker controls the page, so that it loads with the network off. */
export async function waitForOfflineShell(page: Page) {
  await page.evaluate(async () => {
    await navigator.serviceWorker.ready
  })
  await expect.poll(() => page.evaluate(() => !!navigator.serviceWorker.controller)).toBe(true)
}

/** Waits until the list shows the documents themselves, not the view cached from the last visit. */
export async function waitForDocuments(page: Page) {
  // Opening documents from IndexedDB takes milliseconds, but seconds on a
  // machine busy with other work: a longer wait than the default.
  await expect(page.getByRole("list", { name: "Tasks" })).toHaveAttribute("aria-busy", "false", { timeout: 30_000 })
}

/**
 * Holds a read-write transaction on the app's document store for `ms`
 * milliseconds, as a slow disk would: the app's own writes wait behind it.
 */
export async function holdDocumentWrites(page: Page, ms: number) {
  await page.evaluate(async ms => {
    const names = (await indexedDB.databases()).map(d => d.name ?? "")
    const name = names.find(n => /^codeedex-(?!view-)/.test(n))
    if (!name) throw new Error(`no document database among ${names.join(", ")}`)
    const db: IDBDatabase = await new Promise((resolve, reject) => {
      const r = indexedDB.open(name)
      r.onsuccess = () => resolve(r.result)
      r.onerror = () => reject(r.error)
    })
    const store = db.transaction("documents", "readwrite").objectStore("documents")
    const until = Date.now() + ms
    // A transaction stays open while it has requests in flight.
    const spin = () => {
      if (Date.now() < until) store.get("held").onsuccess = spin
      else db.close()
    }
    spin()
  }, ms)
}

/** Signs in over REST with the fixed code; returns an access token. */
export async function restToken(baseURL: string, identifier: string): Promise<string> {
  const contact = identifier.includes("@") ? { email: identifier } : { phone: identifier }
  const headers = { "content-type": "application/json" }
  const otp = await fetch(`${baseURL}/v1/auth/otp`, { method: "POST", headers, body: JSON.stringify(contact) })
  expect(otp.status).toBe(202)
  const verify = await fetch(`${baseURL}/v1/auth/verify`, {
    method: "POST",
    headers,
    body: JSON.stringify({ ...contact, code: CODE, device_name: "rest test" }),
  })
  expect(verify.status).toBe(200)
  return (await verify.json()).access_token
}

export async function restTasks(baseURL: string, token: string): Promise<any[]> {
  const response = await fetch(`${baseURL}/v1/tasks`, { headers: { authorization: `Bearer ${token}` } })
  expect(response.status).toBe(200)
  return (await response.json()).tasks
}

/** A `codeedex` CLI device with its own home, against the server under test. */
export class CliDevice {
  readonly home = mkdtempSync(join(tmpdir(), "codeedex-cli-"))
  constructor(readonly server: string) {}

  run(args: string[], input?: string): Promise<string> {
    const binary = process.env.CODEEDEX_CLI
    if (!binary) throw new Error("CODEEDEX_CLI is not set")
    return new Promise((resolve, reject) => {
      const child = spawn(binary, args, {
        env: {
          ...process.env,
          CODEEDEX_HOME: join(this.home, "data"),
          CODEEDEX_SERVER: this.server,
          CODEEDEX_TOKEN_STORE: "file",
          XDG_CONFIG_HOME: join(this.home, "config"),
          NO_COLOR: "1",
        },
      })
      let out = ""
      let err = ""
      child.stdout.on("data", d => (out += d))
      child.stderr.on("data", d => (err += d))
      child.on("error", reject)
      child.on("close", code =>
        code === 0 ? resolve(out) : reject(new Error(`codeedex ${args.join(" ")} exited ${code}: ${err}`)),
      )
      child.stdin.end(input ?? "")
    })
  }
}

export async function closeAll(...contexts: BrowserContext[]) {
  await Promise.all(contexts.map(c => c.close()))
}
