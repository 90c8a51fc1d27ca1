// Offline work that must survive a reload straight away: the app says a
// change is kept (the editor closes, the new-task field clears) only once
// it is in IndexedDB. A read-write transaction held open by the test stands
// in for a slow disk, so that the write is still pending when the test
// reloads unless the app waited for it. Also: a deletion made offline, and
// coming back online when the server turns the first attempt away.
import { expect, test } from "@playwright/test"
import {
  addTask,
  editTask,
  email,
  holdDocumentWrites,
  newSignedInPage,
  restTasks,
  restToken,
  task,
  waitForDocuments,
  waitForOfflineShell,
} from "./helpers"

test("a change made offline survives a reload right after the app says it is saved", async ({ browser }) => {
  const { context, page } = await newSignedInPage(browser, email(12))
  await addTask(page, "first draft")
  await waitForOfflineShell(page)
  await context.setOffline(true)
  await expect(page.getByRole("status")).toContainText("Offline")

  // The hold outlasts the few steps between the click and the reload, even
  // on a loaded machine, so an app that closed the editor before its write
  // committed would lose the edit here.
  await holdDocumentWrites(page, 4000)
  await editTask(page, "first draft", { title: "second draft" })
  await page.reload()
  await waitForDocuments(page)
  await expect(task(page, "second draft")).toBeVisible()
  await expect(task(page, "first draft")).toHaveCount(0)

  await holdDocumentWrites(page, 3000)
  await addTask(page, "added offline")
  await page.reload()
  await waitForDocuments(page)
  await expect(task(page, "added offline")).toBeVisible()
  await expect(task(page, "second draft")).toBeVisible()
  await context.close()
})

test("a task deleted offline stays deleted across a reload, and REST stops listing it once online", async ({ browser }) => {
  const APP = process.env.CODEEDEX_APP_URL!
  const { context, page } = await newSignedInPage(browser, email(13))
  await addTask(page, "old errand")
  await addTask(page, "current errand")
  await expect(page.getByRole("status")).toContainText("Up to date")
  await waitForOfflineShell(page)
  const token = await restToken(APP, email(13))
  await expect
    .poll(async () => (await restTasks(APP, token)).map(t => t.title).sort())
    .toEqual(["current errand", "old errand"])

  await context.setOffline(true)
  await expect(page.getByRole("status")).toContainText("Offline")
  await page.getByRole("button", { name: "Edit old errand", exact: true }).click()
  const editor = page.getByRole("form", { name: "Edit task old errand" })
  await editor.getByRole("button", { name: "Delete" }).click()
  await expect(editor).toHaveCount(0)
  await expect(task(page, "old errand")).toHaveCount(0)
  // The deletion is waiting on this device: the server still lists it.
  expect((await restTasks(APP, token)).map(t => t.title).sort()).toEqual(["current errand", "old errand"])

  // The page that goes online is a new one, so what it sends came from disk.
  await page.reload()
  await waitForDocuments(page)
  await expect(task(page, "old errand")).toHaveCount(0)
  await expect(task(page, "current errand")).toBeVisible()
  await context.setOffline(false)
  await expect(page.getByRole("status")).toContainText("Up to date")
  await expect.poll(async () => (await restTasks(APP, token)).map(t => t.title)).toEqual(["current errand"])
  await context.close()
})

test("a page left while a change is still being written asks to stay, and keeps the change", async ({ browser }) => {
  const { context, page } = await newSignedInPage(browser, email(19))
  await addTask(page, "pack the bags")
  await holdDocumentWrites(page, 4000)
  await page.getByRole("button", { name: "Edit pack the bags", exact: true }).click()
  const editor = page.getByRole("form", { name: "Edit task pack the bags" })
  await editor.getByLabel("Title").fill("pack the car")
  await editor.getByRole("button", { name: "Save" }).click()
  // A reload while the write waits: the browser asks first, and the person stays.
  const asked = page.waitForEvent("dialog")
  const reloading = page.evaluate(() => location.reload()).catch(() => undefined)
  const dialog = await asked
  expect(dialog.type()).toBe("beforeunload")
  await dialog.dismiss()
  await reloading
  // Still the same page: the editor closes once the write is through.
  await expect(page.getByRole("form", { name: /^Edit task / })).toHaveCount(0)
  await page.reload()
  await waitForDocuments(page)
  await expect(task(page, "pack the car")).toBeVisible()
  await context.close()
})

test("tabs back online at once all reconnect, although the server turns all but one away at first", async ({ browser }) => {
  // This server opens one new sync connection a second: of two tabs that
  // reconnect together, one is refused (503) and must try again by itself.
  const LIMITS = process.env.CODEEDEX_LIMITS_APP_URL!
  const { context, page: one } = await newSignedInPage(browser, email(33), LIMITS)
  const two = await context.newPage()
  await two.goto("/")
  await expect(two.getByRole("status")).toContainText("Up to date")
  await context.setOffline(true)
  for (const page of [one, two]) await expect(page.getByRole("status")).toContainText("Offline")
  await addTask(one, "written in tab one")
  await context.setOffline(false)
  for (const page of [one, two]) {
    await expect(page.getByRole("status")).toContainText("Up to date")
    await expect(task(page, "written in tab one")).toBeVisible()
  }
  await context.close()
})
