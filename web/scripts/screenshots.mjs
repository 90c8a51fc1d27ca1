// Takes the README's screenshots of the app at phone (360 px) and desktop
// width, against a running server with fixed test codes:
//   CODEEDEX_APP_URL=http://127.0.0.1:8080 CODEEDEX_EMAIL=… CODEEDEX_CODE=… node scripts/screenshots.mjs
import { chromium } from "playwright-core"

const APP = process.env.CODEEDEX_APP_URL ?? "http://127.0.0.1:8080"
const EMAIL = process.env.CODEEDEX_EMAIL ?? "web39@example.com"
const CODE = process.env.CODEEDEX_CODE ?? "246810"
const browser = await chromium.launch({
  executablePath: process.env.CODEEDEX_CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox"],
})

async function shoot(viewport, file, seed) {
  const context = await browser.newContext({ viewport, deviceScaleFactor: 1 })
  const page = await context.newPage()
  await page.goto(APP)
  await page.getByLabel("Email or phone").fill(EMAIL)
  await page.getByRole("button", { name: "Send code" }).click()
  await page.getByLabel("Code").fill(CODE)
  await page.getByRole("button", { name: "Sign in" }).click()
  await page.getByLabel("New task").waitFor()
  if (seed) {
    const day = d => {
      const t = new Date(Date.now() + d * 86400000)
      return t.toISOString().slice(0, 10)
    }
    const tasks = [
      ["Water the plants", "home", "medium", day(0), ""],
      ["Book the dentist", "health", "high", day(-1), "Ask for a morning slot"],
      ["Draft the quarterly plan", "work", "high", day(3), "Sections: goals, risks, budget"],
      ["Buy oat milk", "shopping", "none", "", ""],
      ["Call the plumber", "home", "low", day(1), ""],
    ]
    for (const [title, tag, priority, due, notes] of tasks) {
      await page.getByRole("button", { name: "Details" }).click()
      await page.getByLabel("New task").fill(title)
      if (due) await page.getByLabel("Due").fill(due)
      await page.getByLabel("Priority").selectOption(priority)
      await page.getByLabel("Tags").fill(tag)
      if (notes) await page.getByLabel("Notes").fill(notes)
      await page.getByRole("button", { name: "Add", exact: true }).click()
      await page.getByRole("checkbox", { name: title }).waitFor()
      await page.getByRole("button", { name: "Details" }).click()
    }
    await page.getByRole("checkbox", { name: "Buy oat milk" }).check()
  }
  await page.getByRole("button", { name: "All", exact: true }).click()
  await page.getByRole("status").filter({ hasText: "Up to date" }).waitFor()
  await page.evaluate(() => window.scrollTo(0, 0))
  await page.screenshot({ path: file, fullPage: false })
  await context.close()
}

await shoot({ width: 360, height: 740 }, "screenshots/phone.png", true)
await shoot({ width: 1280, height: 760 }, "screenshots/desktop.png", false)
await browser.close()
