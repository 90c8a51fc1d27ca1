// Requests to the server's REST API, on the same origin. Errors arrive as
// RFC 9457 problem documents with a stable `code`; `ApiError` carries it so
// the interface can say in plain words what went wrong.

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    readonly detail: string,
    readonly retryAfter: number | undefined,
  ) {
    super(`${status} ${code}: ${detail}`)
  }
}

/** The network could not be reached at all (offline, server down). */
export class NetworkError extends Error {}

export async function request<T>(
  method: string,
  path: string,
  options: { body?: unknown; token?: string; headers?: Record<string, string> } = {},
): Promise<T> {
  const headers: Record<string, string> = { ...(options.headers ?? {}) }
  if (options.body !== undefined) headers["content-type"] = "application/json"
  if (options.token) headers["authorization"] = `Bearer ${options.token}`
  let response: Response
  try {
    response = await fetch(path, {
      method,
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
      credentials: "same-origin",
      cache: "no-store",
    })
  } catch (e) {
    throw new NetworkError(String(e))
  }
  if (response.status === 204) return undefined as T
  const text = await response.text()
  let json: any = undefined
  try {
    json = text ? JSON.parse(text) : undefined
  } catch {
    json = undefined
  }
  if (!response.ok) {
    const retry = Number(response.headers.get("retry-after") ?? json?.retry_after)
    throw new ApiError(
      response.status,
      json?.code ?? "unexpected",
      json?.detail ?? json?.title ?? response.statusText,
      Number.isFinite(retry) ? retry : undefined,
    )
  }
  return json as T
}

/** Plain words for an error, for the person using the app. */
export function explain(error: unknown): string {
  if (error instanceof NetworkError) {
    return "The server cannot be reached. Check your connection and try again."
  }
  if (error instanceof ApiError) {
    const when = waitInWords(error.retryAfter)
    switch (error.code) {
      case "invalid_code":
        return "That code is wrong or has expired. Check it, or ask for a new code."
      case "too_many_attempts":
        return `Too many wrong codes were entered. This sign-in is locked; try again ${when}.`
      case "rate_limited":
        return `Too many requests in a short time. Try again ${when}.`
      case "invalid_identifier":
        return "That is not an email address or a phone number. Phone numbers start with + and the country code, like +44 7700 900123."
      case "quota_exceeded":
        return "Your account has reached its storage limit, so this change was refused."
      case "storage_unavailable":
        return `The server cannot save right now. Try again ${when}.`
      case "not_found":
        return "That item no longer exists."
      case "unauthorized":
      case "invalid_refresh_token":
      case "token_expired":
        return "You have been signed out. Sign in again."
      default:
        return `Something went wrong (${error.code}). Try again.`
    }
  }
  return "Something went wrong. Try again."
}

/** "in 40 seconds", "in 12 minutes", "in 24 hours": when a limit lifts. */
function waitInWords(seconds: number | undefined): string {
  if (seconds === undefined) return "later"
  if (seconds < 120) return `in ${seconds} ${seconds === 1 ? "second" : "seconds"}`
  if (seconds < 2 * 3600) return `in ${Math.ceil(seconds / 60)} minutes`
  return `in ${Math.ceil(seconds / 3600)} hours`
}
