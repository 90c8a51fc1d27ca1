// Access tokens that expire every few seconds (the second server under test
// runs with a short lifetime) must not stop live sync: the server closes a
// socket whose token expired, and the app reconnects with a fresh one.
import { type Page, expect, test } from "@playwright/test"
import { addTask, closeAll, email, newSignedInPage, task } from "./helpers"

const SHORT = process.env.CODEEDEX_SHORT_TOKEN_APP_URL!
const LIFETIME_SECS = Number(process.env.CODEEDEX_SHORT_TOKEN_SECS ?? 4)

test("live sync goes on across many access-token expiries", async ({ browser }) => {
  test.setTimeout(120_000)
  const a = await newSignedInPage(browser, email(20), SHORT)
  const b = await newSignedInPage(browser, email(20), SHORT)
  const sockets = new Map<Page, number>()
  for (const page of [a.page, b.page]) {
    sockets.set(page, 0)
    page.on("websocket", () => sockets.set(page, sockets.get(page)! + 1))
  }
  // Before each round the writer's socket has been closed for its expired
  // token (its lifetime plus the server's 5 s leeway) and opened again with
  // a fresh one; the round's change must still go through live.
  const rounds = 4
  for (let i = 1; i <= rounds; i++) {
    const writer = i % 2 ? a.page : b.page
    const reader = i % 2 ? b.page : a.page
    const opened = sockets.get(writer)!
    await expect
      .poll(() => sockets.get(writer)!, { timeout: (LIFETIME_SECS + 5 + 15) * 1000 })
      .toBeGreaterThan(opened)
    await addTask(writer, `round ${i}`)
    await expect(task(reader, `round ${i}`)).toBeVisible()
  }
  // Still signed in: a reload needs no new code.
  await a.page.reload()
  await expect(task(a.page, `round ${rounds}`)).toBeVisible()
  await closeAll(a.context, b.context)
})
