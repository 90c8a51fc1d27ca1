// Browser benchmarks of the web app (run by bench/web.sh, which starts the
// server): first-load bytes, first paint of 1,000 tasks from IndexedDB, and
// the latency of a change from one browser to another on loopback.
// Prints one JSON object. A benchmark, not a test: nothing is asserted
// except that each measurement happened.
import { chromium } from "playwright-core"

const APP = process.env.CODEEDEX_APP_URL
const CODE = "123456"
const TASKS = Number(process.env.WEB_BENCH_TASKS ?? 1000)
const CHANGES = Number(process.env.WEB_BENCH_CHANGES ?? 200)
if (!APP) throw new Error("CODEEDEX_APP_URL is not set")

const browser = await chromium.launch({
  executablePath: process.env.CODEEDEX_CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
})

async function signIn(page, email) {
  await page.goto(APP)
  await page.getByLabel("Email or phone").fill(email)
  await page.getByRole("button", { name: "Send code" }).click()
  await page.getByLabel("Code").fill(CODE)
  await page.getByRole("button", { name: "Sign in" }).click()
  await page.getByLabel("New task").waitFor()
}

async function rest(email) {
  const h = { "content-type": "application/json" }
  await fetch(`${APP}/v1/auth/otp`, { method: "POST", headers: h, body: JSON.stringify({ email }) })
  const r = await fetch(`${APP}/v1/auth/verify`, { method: "POST", headers: h, body: JSON.stringify({ email, code: CODE }) })
  const token = (await r.json()).access_token
  return { ...h, authorization: `Bearer ${token}` }
}

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]
}
const result = {}

// 1. First load: everything a new visitor's browser transfers until the
// task list is on screen (the sign-in page, then Automerge's WASM). The
// service worker is kept out: it would answer the WASM request from its
// cache (filled over the network too) and hide the transfer.
{
  const context = await browser.newContext({ serviceWorkers: "block" })
  const page = await context.newPage()
  const rows = []
  page.on("requestfinished", async request => {
    const sizes = await request.sizes().catch(() => undefined)
    const response = await request.response()
    if (!sizes || !response) return
    rows.push({
      url: new URL(request.url()).pathname,
      type: request.resourceType(),
      encoding: response.headers()["content-encoding"] ?? "identity",
      bytes: sizes.responseBodySize + sizes.responseHeadersSize,
    })
  })
  await signIn(page, "bench-0@example.com")
  await page.getByRole("status").filter({ hasText: "Up to date" }).waitFor()
  await page.waitForTimeout(500)
  const code = rows.filter(r => /\.(js|wasm)$/.test(r.url))
  result.first_load = {
    js_and_wasm_bytes: code.reduce((n, r) => n + r.bytes, 0),
    all_bytes: rows.reduce((n, r) => n + r.bytes, 0),
    requests: rows.length,
    files: code.map(r => `${r.url} ${r.encoding} ${r.bytes}`),
  }
  await context.close()
}

// 2. First paint of TASKS tasks from IndexedDB: made over REST, synced into
// the browser once, then the page is reloaded (online, and with the network
// off) and timed from navigation start until every task is in the list.
{
  const email = "bench-1@example.com"
  const headers = await rest(email)
  const started = Date.now()
  for (let i = 0; i < TASKS; i += 50) {
    await Promise.all(
      Array.from({ length: Math.min(50, TASKS - i) }, (_, j) =>
        fetch(`${APP}/v1/tasks`, {
          method: "POST",
          headers,
          body: JSON.stringify({ title: `task ${i + j}`, tags: [`t${(i + j) % 7}`], notes: "bench" }),
        }).then(r => {
          if (r.status !== 201) throw new Error(`create answered ${r.status}`)
        }),
      ),
    )
  }
  result.created_over_rest_ms = Date.now() - started
  const context = await browser.newContext()
  const page = await context.newPage()
  const t0 = Date.now()
  await signIn(page, email)
  await page.waitForFunction(n => document.querySelectorAll("ul[aria-label=Tasks] > li").length >= n, TASKS, { timeout: 300_000 })
  await page.getByRole("status").filter({ hasText: "Up to date" }).waitFor({ timeout: 300_000 })
  result.initial_sync_of_tasks_ms = Date.now() - t0
  await page.addInitScript(n => {
    const watch = () => {
      const done = () => document.querySelectorAll("ul[aria-label=Tasks] > li").length >= n
      const observer = new MutationObserver(() => {
        if (done()) {
          window.__painted = performance.now()
          observer.disconnect()
        }
      })
      observer.observe(document, { childList: true, subtree: true })
    }
    watch()
  }, TASKS)
  const paint = async () => {
    await page.reload()
    await page.waitForFunction(() => window.__painted !== undefined, null, { timeout: 120_000 })
    await page.waitForTimeout(300)
    return page.evaluate(() => Math.round(window.__painted))
  }
  const online = []
  const offline = []
  for (let i = 0; i < 3; i++) online.push(await paint())
  await context.setOffline(true)
  for (let i = 0; i < 3; i++) offline.push(await paint())
  await context.setOffline(false)
  result.first_paint_of_tasks_ms = { tasks: TASKS, online_reload: online, offline_reload: offline }
  await context.close()
}

// 3. A change in one browser on screen in another: B watches for the task
// item's class to flip; A ticks its checkbox. Wall clocks of two pages of
// one browser on one machine are the same clock.
{
  const email = "bench-2@example.com"
  const a = await browser.newContext()
  const b = await browser.newContext()
  const pa = await a.newPage()
  const pb = await b.newPage()
  await signIn(pa, email)
  await signIn(pb, email)
  await pa.getByLabel("New task").fill("ping")
  await pa.getByRole("button", { name: "Add", exact: true }).click()
  for (const p of [pa, pb]) {
    await p.getByRole("button", { name: "All", exact: true }).click()
    await p.getByRole("checkbox", { name: "ping" }).waitFor()
  }
  await pb.evaluate(() => {
    window.__flips = []
    new MutationObserver(records => {
      for (const r of records) {
        if (r.type === "attributes" && r.target.tagName === "LI") window.__flips.push(Date.now())
      }
    }).observe(document.querySelector("ul[aria-label=Tasks]"), { attributes: true, subtree: true, attributeFilter: ["class"] })
  })
  const latencies = []
  for (let i = 0; i < CHANGES; i++) {
    const before = await pb.evaluate(() => window.__flips.length)
    const sent = await pa.evaluate(() => {
      const box = document.querySelector("ul[aria-label=Tasks] input[type=checkbox]")
      const t = Date.now()
      box.click()
      return t
    })
    await pb.waitForFunction(n => window.__flips.length > n, before, { timeout: 10_000 })
    const seen = await pb.evaluate(n => window.__flips[n], before)
    latencies.push(seen - sent)
  }
  result.change_latency_ms = {
    changes: CHANGES,
    p50: pct(latencies, 50),
    p90: pct(latencies, 90),
    p99: pct(latencies, 99),
    max: Math.max(...latencies),
  }
  await a.close()
  await b.close()
}

await browser.close()
console.log(JSON.stringify(result, null, 2))
