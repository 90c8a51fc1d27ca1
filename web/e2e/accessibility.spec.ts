// An axe-core audit of every view (signed out, the list, a task's details,
// the devices) at phone width and at desktop width. Any serious or critical
// violation fails the test; lesser ones are printed. Also the keyboard path
// through the task editor, which axe cannot judge.
import { type Page, expect, test } from "@playwright/test"
import { readFileSync } from "node:fs"
import { createRequire } from "node:module"
import { addTask, email, signIn } from "./helpers"

const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8")

interface Violation {
  id: string
  impact: string | null
  help: string
  nodes: { target: unknown[]; failureSummary?: string }[]
}

async function audit(page: Page, view: string) {
  // The test, not the app, brings axe in: the app's CSP admits no foreign
  // script, and evaluation through the DevTools protocol is not subject to it.
  await page.evaluate(axeSource)
  const { violations, passed } = await page.evaluate(async () => {
    type Result = { violations: Violation[]; passes: unknown[] }
    const axe = (window as unknown as { axe: { run: (c: unknown, o: unknown) => Promise<Result> } }).axe
    // Axe's default rules, plus WCAG 2.2's target size (off by default),
    // which matters most on a phone.
    const result = await axe.run(document, {
      resultTypes: ["violations"],
      rules: { "target-size": { enabled: true } },
    })
    return {
      passed: result.passes.length,
      violations: result.violations.map(v => ({
        id: v.id,
        impact: v.impact,
        help: v.help,
        nodes: v.nodes.map(n => ({ target: n.target, failureSummary: n.failureSummary })),
      })),
    }
  })
  // An audit that checked nothing would pass vacuously.
  expect(passed, `${view}: rules that passed`).toBeGreaterThan(10)
  const describe = (v: Violation) =>
    `${view}: ${v.impact} ${v.id} (${v.help}) at ${v.nodes.map(n => JSON.stringify(n.target)).join(", ")}`
  const blocking = violations.filter(v => v.impact === "serious" || v.impact === "critical")
  for (const v of violations.filter(v => !blocking.includes(v))) console.log(`axe, not blocking: ${describe(v)}`)
  expect(blocking.map(describe)).toEqual([])
}

for (const [width, height, name] of [
  [360, 740, "phone"],
  [1280, 800, "desktop"],
] as const) {
  test(`every view passes an axe audit at ${name} width`, async ({ page }) => {
    await page.setViewportSize({ width, height })
    await page.goto("/")
    await expect(page.getByLabel("Email or phone")).toBeVisible()
    await audit(page, "signed out")
    await page.getByLabel("Email or phone").fill("not an address")
    await page.getByRole("button", { name: "Send code" }).click()
    await expect(page.getByRole("alert")).toBeVisible()
    await audit(page, "sign-in error")

    await signIn(page, email(name === "phone" ? 16 : 17))
    await audit(page, "empty list")
    await page.getByRole("button", { name: "Details" }).click()
    await page.getByLabel("New task").fill("renew the lease")
    await page.getByLabel("Due").fill("2020-01-31")
    await page.getByLabel("Priority").selectOption("high")
    await page.getByLabel("Tags").fill("home, admin")
    await page.getByLabel("Notes").fill("call the landlord first")
    await page.getByRole("button", { name: "Add", exact: true }).click()
    await expect(page.getByLabel("New task")).toHaveValue("")
    await addTask(page, "water the plants")
    // In the "All" view a completed task stays on screen.
    await page.getByRole("button", { name: "All", exact: true }).click()
    await page.getByRole("checkbox", { name: "water the plants" }).check()
    await expect(page.getByRole("status")).toContainText("Up to date")
    await audit(page, "list")

    await page.getByRole("button", { name: "Edit renew the lease", exact: true }).click()
    await page.getByRole("button", { name: "History" }).click()
    await expect(page.getByRole("list", { name: "History" })).toBeVisible()
    await audit(page, "task details")

    await page.getByRole("button", { name: "Devices" }).click()
    await expect(page.getByRole("list", { name: "Devices" }).getByRole("listitem")).not.toHaveCount(0)
    await audit(page, "devices")
  })
}

test("a task is edited with the keyboard alone, and the focus comes back to it", async ({ page }) => {
  await signIn(page, email(18))
  await addTask(page, "sort the mail")
  await page.getByRole("button", { name: "Edit sort the mail", exact: true }).focus()
  await page.keyboard.press("Enter")
  await expect(page.getByLabel("Title")).toBeFocused()
  await expect(page.getByRole("button", { name: "Edit sort the mail", exact: true })).toHaveAttribute(
    "aria-expanded",
    "true",
  )
  await page.keyboard.press("Control+A")
  await page.keyboard.type("sort the post")
  await page.keyboard.press("Enter")
  const edit = page.getByRole("button", { name: "Edit sort the post", exact: true })
  await expect(edit).toBeFocused()
  await expect(edit).toHaveAttribute("aria-expanded", "false")
})
