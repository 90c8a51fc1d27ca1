// Sign-in: ask for a code by email or phone, then enter it. Every error the
// API can give is said in plain words; the resend button counts down.

import { useEffect, useRef, useState } from "preact/hooks"
import { explain } from "./api"
import { requestCode, signIn, type UserView } from "./session"

export function SignIn(props: { onSignedIn: (user: UserView) => void; notice?: string }) {
  const [identifier, setIdentifier] = useState("")
  const [code, setCode] = useState("")
  const [sent, setSent] = useState(false)
  const [busy, setBusy] = useState(false)
  const [error, setError] = useState<string | undefined>(undefined)
  const [resendAt, setResendAt] = useState(0)
  const [now, setNow] = useState(Date.now())
  const codeField = useRef<HTMLInputElement>(null)

  useEffect(() => {
    if (resendAt <= now) return
    const t = window.setTimeout(() => setNow(Date.now()), 1000)
    return () => window.clearTimeout(t)
  }, [resendAt, now])

  useEffect(() => {
    if (sent) codeField.current?.focus()
  }, [sent])

  const ask = async () => {
    setBusy(true)
    setError(undefined)
    try {
      const answer = await requestCode(identifier)
      setSent(true)
      setCode("")
      setResendAt(Date.now() + answer.resend_after * 1000)
      setNow(Date.now())
    } catch (e) {
      setError(explain(e))
    } finally {
      setBusy(false)
    }
  }

  const verify = async () => {
    setBusy(true)
    setError(undefined)
    try {
      props.onSignedIn(await signIn(identifier, code))
    } catch (e) {
      setError(explain(e))
      setBusy(false)
    }
  }

  const wait = Math.max(0, Math.ceil((resendAt - now) / 1000))
  return (
    <main class="signin">
      <h1>CodeeDex Tasks</h1>
      <p>Sign in with a one-time code. No password needed.</p>
      {props.notice && <p class="notice">{props.notice}</p>}
      <form
        onSubmit={e => {
          e.preventDefault()
          if (sent) void verify()
          else void ask()
        }}
      >
        <label for="identifier">Email or phone</label>
        <input
          id="identifier"
          name="identifier"
          autocomplete="username"
          inputMode="email"
          required
          value={identifier}
          disabled={sent}
          onInput={e => setIdentifier(e.currentTarget.value)}
        />
        {sent && (
          <>
            <p class="hint">
              We sent a code to {identifier.trim()}. It is valid for a few minutes.
            </p>
            <label for="code">Code</label>
            <input
              id="code"
              name="code"
              ref={codeField}
              autocomplete="one-time-code"
              inputMode="numeric"
              pattern="[0-9 ]*"
              required
              value={code}
              onInput={e => setCode(e.currentTarget.value)}
            />
          </>
        )}
        {error && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
        <div class="row">
          <button type="submit" disabled={busy}>
            {sent ? "Sign in" : "Send code"}
          </button>
          {sent && (
            <>
              <button type="button" disabled={busy || wait > 0} onClick={() => void ask()}>
                {wait > 0 ? `Resend code in ${wait} s` : "Resend code"}
              </button>
              <button
                type="button"
                class="link"
                onClick={() => {
                  setSent(false)
                  setError(undefined)
                }}
              >
                Use another email or phone
              </button>
            </>
          )}
        </div>
      </form>
    </main>
  )
}
