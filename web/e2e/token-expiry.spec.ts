// Access tokens that expire every few seconds (the second server under test
// runs with a short lifetime) must not stop live sync: the server closes a
// socket whose token expired, and the app reconnects with a fresh one.
import { expect, test } from "@playwright/test"
import { addTask, closeAll, email, newSignedInPage, task } from "./helpers"

const SHORT = process.env.CODEEDEX_SHORT_TOKEN_APP_URL!
const LIFETIME_SECS = Number(process.env.CODEEDEX_SHORT_TOKEN_SECS ?? 4)

test("live sync goes on across many access-token expiries", async ({ browser }) => {
  test.setTimeout(120_000)
  const a = await newSignedInPage(browser, email(20), SHORT)
  const b = await newSignedInPage(browser, email(20), SHORT)
  // Each round outlives a token (its lifetime plus the server's 5 s leeway),
  // so every socket is closed for expiry at least once along the way.
  const rounds = 4
  for (let i = 1; i <= rounds; i++) {
    const writer = i % 2 ? a.page : b.page
    const reader = i % 2 ? b.page : a.page
    await addTask(writer, `round ${i}`)
    await expect(task(reader, `round ${i}`)).toBeVisible()
    await writer.waitForTimeout(((LIFETIME_SECS + 5) * 1000) / 2)
  }
  // Still signed in: a reload needs no new code.
  await a.page.reload()
  await expect(task(a.page, `round ${rounds}`)).toBeVisible()
  await closeAll(a.context, b.context)
})
