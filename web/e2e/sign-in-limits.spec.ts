// The sign-in limits, against a server with a short resend cooldown, a low
// hourly cap on codes and a low cap on wrong codes (CODEEDEX_LIMITS_APP_URL;
// see tests/tests/web.rs): the resend countdown, and the "rate-limited" and
// "locked" refusals in plain words.
import { expect, test } from "@playwright/test"
import { CODE, email } from "./helpers"

const LIMITS = process.env.CODEEDEX_LIMITS_APP_URL!
const COOLDOWN_SECS = Number(process.env.CODEEDEX_LIMITS_COOLDOWN_SECS ?? 3)
const WRONG = CODE === "000000" ? "111111" : "000000"

test.use({ baseURL: LIMITS })

test("the resend button counts down, then resends; too many codes are refused in plain words", async ({ page }) => {
  await page.goto("/")
  await page.getByLabel("Email or phone").fill(email(31))
  await page.getByRole("button", { name: "Send code" }).click()
  await expect(page.getByLabel("Code")).toBeVisible()
  const countdown = page.getByRole("button", { name: /^Resend code in \d+ s$/ })
  const resend = page.getByRole("button", { name: "Resend code", exact: true })

  // The server's cooldown, counted down on the button, which stays disabled.
  await expect(countdown).toBeDisabled()
  await expect(countdown).toHaveText(new RegExp(`^Resend code in [1-${COOLDOWN_SECS}] s$`))
  await expect(resend).toBeEnabled({ timeout: (COOLDOWN_SECS + 10) * 1000 })
  await resend.click()
  await expect(countdown).toBeDisabled()
  await expect(page.getByRole("alert")).toHaveCount(0)

  // The server sends two codes an hour to one address: the third is refused.
  await expect(resend).toBeEnabled({ timeout: (COOLDOWN_SECS + 10) * 1000 })
  await resend.click()
  await expect(page.getByRole("alert")).toHaveText(/^Too many requests in a short time\. Try again in \d+ minutes\.$/)
  // The code that was sent still signs in.
  await page.getByLabel("Code").fill(CODE)
  await page.getByRole("button", { name: "Sign in" }).click()
  await expect(page.getByLabel("New task")).toBeVisible()
})

test("too many wrong codes lock the sign-in, said in plain words", async ({ page }) => {
  await page.goto("/")
  await page.getByLabel("Email or phone").fill(email(32))
  await page.getByRole("button", { name: "Send code" }).click()
  // The server locks an address after two wrong codes.
  for (let i = 0; i < 2; i++) {
    await page.getByLabel("Code").fill(WRONG)
    await Promise.all([
      page.waitForResponse(r => r.url().endsWith("/v1/browser/session")),
      page.getByRole("button", { name: "Sign in" }).click(),
    ])
    await expect(page.getByRole("alert")).toHaveText(/code is wrong or has expired/)
  }
  // Now even the right code is refused, and the message says why and for how long.
  await page.getByLabel("Code").fill(CODE)
  await page.getByRole("button", { name: "Sign in" }).click()
  await expect(page.getByRole("alert")).toHaveText(
    /^Too many wrong codes were entered\. This sign-in is locked; try again in \d+ hours\.$/,
  )
  await expect(page.getByLabel("New task")).toHaveCount(0)
})
