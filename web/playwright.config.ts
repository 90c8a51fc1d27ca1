// Browser tests of the web app, run by tests/tests/web.rs against a real
// server process (its address in CODEEDEX_APP_URL). They drive Debian's
// Chromium: Playwright never downloads a browser here.
import { defineConfig } from "@playwright/test"

const app = process.env.CODEEDEX_APP_URL
if (!app) throw new Error("CODEEDEX_APP_URL is not set: run these tests through `cargo test --test web`")

export default defineConfig({
  testDir: "e2e",
  // Two cores on CI: two workers keep the suite to about a minute.
  workers: Number(process.env.CODEEDEX_BROWSER_WORKERS ?? 2),
  // Every test signs in as its own identity, so tests of one file may run
  // side by side; the slow ones then spread over both workers. Tests start
  // in file order, so the slowest (access-token-expiry.spec.ts, half a
  // minute of waiting for expiries) starts first rather than last.
  fullyParallel: true,
  timeout: 90_000,
  expect: { timeout: 15_000 },
  retries: 0,
  forbidOnly: true,
  reporter: [["list"]],
  use: {
    baseURL: app,
    browserName: "chromium",
    launchOptions: {
      executablePath: process.env.CODEEDEX_CHROMIUM ?? "/usr/bin/chromium",
      args: ["--no-sandbox", "--disable-dev-shm-usage"],
    },
    serviceWorkers: "allow",
    trace: "off",
  },
})
