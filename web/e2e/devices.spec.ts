// Devices and tabs: revoking one device from the devices view, and two tabs
// of one browser that share their changes over a BroadcastChannel, with the
// network and without.
import { type Page, type WebSocket, expect, test } from "@playwright/test"
import {
  addTask,
  closeAll,
  editTask,
  email,
  newSignedInPage,
  restTasks,
  restToken,
  signIn,
  task,
} from "./helpers"

const APP = process.env.CODEEDEX_APP_URL!

/** Every socket the page opens from now on. */
function socketsOf(page: Page): WebSocket[] {
  const sockets: WebSocket[] = []
  page.on("websocket", ws => sockets.push(ws))
  return sockets
}

test("revoking one device signs that browser out and stops its sync; the others go on", async ({ browser }) => {
  const a = await newSignedInPage(browser, email(14))
  const bContext = await browser.newContext()
  const b = { context: bContext, page: await bContext.newPage() }
  const bSockets = socketsOf(b.page)
  await signIn(b.page, email(14))
  // A third session, outside the browser, that must outlive the revocation.
  const token = await restToken(APP, email(14))

  await addTask(a.page, "before the revocation")
  await expect(task(b.page, "before the revocation")).toBeVisible()
  await a.page.getByRole("button", { name: "Devices" }).click()
  const devices = a.page.getByRole("list", { name: "Devices" })
  await expect(devices.getByRole("listitem")).toHaveCount(3)
  // This browser has no Revoke button of its own; the other web app does.
  await expect(a.page.getByRole("button", { name: /^Revoke / })).toHaveCount(2)
  await a.page.getByRole("button", { name: /^Revoke Web app/ }).click()
  await expect(devices.getByRole("listitem")).toHaveCount(2)
  await expect(devices).toContainText("rest test")

  // B finds out by itself (the server closes its socket): signed out, its
  // copy deleted.
  await expect(b.page.getByLabel("Email or phone")).toBeVisible()
  await expect(b.page.getByText("You were signed out.")).toBeVisible()
  await expect
    .poll(() => b.page.evaluate(async () => (await indexedDB.databases()).map(d => d.name)))
    .not.toContainEqual(expect.stringMatching(/^codeedex-/))
  expect(bSockets.length).toBeGreaterThan(0)
  const socketsBefore = bSockets.length

  // A and the REST session go on; nothing reaches B any more.
  await a.page.getByRole("button", { name: "Tasks" }).click()
  await addTask(a.page, "after the revocation")
  await expect(a.page.getByRole("status")).toContainText("Up to date")
  await expect
    .poll(async () => (await restTasks(APP, token)).map(t => t.title).sort())
    .toEqual(["after the revocation", "before the revocation"])
  // B did not try to sync again, and shows none of the tasks.
  expect(bSockets.length).toBe(socketsBefore)
  await expect(b.page.getByRole("checkbox")).toHaveCount(0)
  await closeAll(a.context, b.context)
})

test("two tabs of one browser share changes over a BroadcastChannel, also offline", async ({ browser }) => {
  const { context, page: one } = await newSignedInPage(browser, email(15))
  // The second tab is signed in by the cookie alone.
  const two = await context.newPage()
  await two.goto("/")
  await expect(two.getByLabel("New task")).toBeVisible()
  await addTask(one, "from tab one")
  await expect(task(two, "from tab one")).toBeVisible()

  // Offline, the server cannot carry anything: only the channel between the tabs can.
  await context.setOffline(true)
  for (const page of [one, two]) await expect(page.getByRole("status")).toContainText("Offline")
  await addTask(two, "from tab two, offline")
  await expect(task(one, "from tab two, offline")).toBeVisible()
  await editTask(one, "from tab one", { title: "from tab one, edited offline" })
  await expect(task(two, "from tab one, edited offline")).toBeVisible()

  await context.setOffline(false)
  for (const page of [one, two]) await expect(page.getByRole("status")).toContainText("Up to date")
  const token = await restToken(APP, email(15))
  await expect
    .poll(async () => (await restTasks(APP, token)).map(t => t.title).sort())
    .toEqual(["from tab one, edited offline", "from tab two, offline"])
  await context.close()
})
