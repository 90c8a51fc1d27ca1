// The browser session. The refresh token is in an HttpOnly cookie that only
// the server reads (/v1/browser/*); the access token lives in this module's
// memory and nowhere else. A reload or a new tab gets a fresh access token
// from the cookie. Tabs serialise their refreshes with a Web Lock, and the
// server's grace window covers the rest, so two tabs never log each other
// out by rotating the same token.

import { ApiError, NetworkError, request } from "./api"

export interface UserView {
  id: string
  email?: string
  phone?: string
  created_at: string
  root_document_id?: string
}

interface BrowserTokens {
  access_token: string
  expires_in: number
  expires_at: string
  session_id: string
}

const CSRF = { "x-codeedex-csrf": "1" }

let accessToken: string | undefined
let expiresAt = 0
let sessionId: string | undefined
let refreshTimer: number | undefined
let inFlight: Promise<string> | undefined
const listeners = new Set<(token: string | undefined) => void>()

export function currentToken(): string | undefined {
  return accessToken
}

export function currentSessionId(): string | undefined {
  return sessionId
}

/** Called with each new access token, and with undefined when signed out. */
export function onToken(listener: (token: string | undefined) => void): () => void {
  listeners.add(listener)
  return () => listeners.delete(listener)
}

function adopt(tokens: BrowserTokens) {
  accessToken = tokens.access_token
  sessionId = tokens.session_id
  expiresAt = Date.now() + tokens.expires_in * 1000
  // Refresh at three quarters of the lifetime, so that the token in use
  // (for REST and for the next socket) is always fresh.
  window.clearTimeout(refreshTimer)
  const lead = Math.max(1000, tokens.expires_in * 250)
  refreshTimer = window.setTimeout(() => {
    refresh().catch(() => {
      /* offline or signed out: the next use tries again */
    })
  }, Math.max(500, tokens.expires_in * 1000 - lead))
  for (const l of listeners) l(accessToken)
}

export function forget() {
  accessToken = undefined
  sessionId = undefined
  expiresAt = 0
  window.clearTimeout(refreshTimer)
  for (const l of listeners) l(undefined)
}

export async function requestCode(identifier: string) {
  return request<{ expires_in: number; resend_after: number }>("POST", "/v1/auth/otp", {
    body: contactOf(identifier),
  })
}

export function contactOf(identifier: string): { email: string } | { phone: string } {
  const trimmed = identifier.trim()
  return trimmed.includes("@") ? { email: trimmed } : { phone: trimmed }
}

export async function signIn(identifier: string, code: string): Promise<UserView> {
  const answer = await request<BrowserTokens & { user: UserView }>("POST", "/v1/browser/session", {
    body: { ...contactOf(identifier), code: code.trim(), device_name: deviceName() },
    headers: CSRF,
  })
  adopt(answer)
  return answer.user
}

function deviceName(): string {
  const ua = navigator.userAgent
  const browser = /Firefox\//.test(ua)
    ? "Firefox"
    : /Edg\//.test(ua)
      ? "Edge"
      : /Chrome\//.test(ua)
        ? "Chrome"
        : /Safari\//.test(ua)
          ? "Safari"
          : "Browser"
  const os = /Android/.test(ua)
    ? "Android"
    : /iPhone|iPad/.test(ua)
      ? "iOS"
      : /Windows/.test(ua)
        ? "Windows"
        : /Mac OS/.test(ua)
          ? "macOS"
          : /Linux/.test(ua)
            ? "Linux"
            : ""
  return `Web app (${browser}${os ? " on " + os : ""})`
}

/**
 * A fresh access token from the cookie. Throws ApiError 401 when there is no
 * live session, NetworkError when the server cannot be reached.
 */
export function refresh(): Promise<string> {
  if (!inFlight) {
    const run = async () => {
      const answer = await request<BrowserTokens>("POST", "/v1/browser/refresh", { headers: CSRF })
      adopt(answer)
      return answer.access_token
    }
    const locked: Promise<string> =
      "locks" in navigator ? (navigator.locks.request("codeedex-refresh", run) as unknown as Promise<string>) : run()
    inFlight = locked.finally(() => {
      inFlight = undefined
    })
  }
  return inFlight as Promise<string>
}

/** Whether the access token is missing or ends within a minute. */
export function expiresSoon(): boolean {
  return !accessToken || Date.now() > expiresAt - 60_000
}

/** A token that is valid for at least a few more seconds. */
export async function freshToken(): Promise<string> {
  if (accessToken && Date.now() < expiresAt - 5000) return accessToken
  return refresh()
}

/** An authenticated REST call; one refresh and retry on an expired token. */
export async function authed<T>(method: string, path: string, body?: unknown): Promise<T> {
  const token = await freshToken()
  try {
    return await request<T>(method, path, { token, body })
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      return request<T>(method, path, { token: await refresh(), body })
    }
    throw e
  }
}

export async function signOut(scope: "this" | "all") {
  try {
    await request("POST", "/v1/browser/logout", { body: { scope }, headers: CSRF })
  } catch (e) {
    // Signed out already, or offline: the local data goes anyway; the
    // server ends an unused session by its idle limit.
    if (!(e instanceof ApiError || e instanceof NetworkError)) throw e
  } finally {
    forget()
  }
}

export function me(): Promise<UserView> {
  return authed<UserView>("GET", "/v1/me")
}
