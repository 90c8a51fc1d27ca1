//! The account commands: `login`, `logout`, `whoami` and `sessions`. They
//! talk to the server, so they fail when it cannot be reached (but for
//! signing out this device, which works offline).

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use codeedex_client_core::{AuthStatus, Client, ClientError, LogoutScope, SignInIdentifier};

use crate::failure::{Failure, note};
use crate::output::{self, Output, Style, Table};
use crate::tasks::Reach;

pub(crate) async fn login(
    client: &Client,
    out: &Output,
    email: Option<String>,
    phone: Option<String>,
) -> Result<(), Failure> {
    let identifier = match (email, phone) {
        (Some(email), _) => SignInIdentifier::Email(email),
        (None, Some(phone)) => SignInIdentifier::Phone(phone),
        (None, None) => identifier_typed(&read_line("Email or phone number: ")?),
    };
    let sent = client.request_code(&identifier).await?;
    let (SignInIdentifier::Email(to) | SignInIdentifier::Phone(to)) = &identifier;
    note(&format!(
        "A sign-in code was sent to {to}; it is valid for {} minutes.",
        sent.expires_in.div_ceil(60)
    ));
    let code = read_line("Code: ")?;
    let me = client.verify_code(&identifier, &code).await?;
    if let Err(e) = client.sync_once(Duration::from_secs(15)).await {
        note(&format!(
            "codeedex: signed in, but the first sync did not finish: {e}"
        ));
    }
    if out.json {
        out.json(&me);
    } else {
        let who = me
            .email
            .clone()
            .or(me.phone.clone())
            .unwrap_or_else(|| me.id.to_string());
        out.line(&format!("logged in as {}", out.paint(&who, Style::Bold)));
    }
    Ok(())
}

/// What someone typed at the prompt: a phone number when it starts with `+`
/// or is only digits, spaces and dashes, an email address otherwise.
fn identifier_typed(answer: &str) -> SignInIdentifier {
    if answer.starts_with('+')
        || answer
            .chars()
            .all(|c| c.is_ascii_digit() || c == ' ' || c == '-')
    {
        SignInIdentifier::Phone(answer.to_owned())
    } else {
        SignInIdentifier::Email(answer.to_owned())
    }
}

/// One line from standard input, trimmed; the prompt goes to standard
/// error, and only when a person is typing.
fn read_line(prompt: &str) -> Result<String, Failure> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    match stdin.lock().read_line(&mut line) {
        Ok(0) => Err(Failure::usage(format!(
            "no input for {:?}",
            prompt.trim().trim_end_matches(':')
        ))),
        Ok(_) => Ok(line.trim().to_owned()),
        Err(e) => Err(Failure {
            message: format!("cannot read standard input: {e}"),
            code: 1,
        }),
    }
}

/// `logout` (this session), `logout --others` or `logout --all`.
pub(crate) async fn logout(
    client: &Client,
    out: &Output,
    scope: LogoutScope,
) -> Result<(), Failure> {
    let ended = match client.logout(scope).await {
        Ok(n) => n,
        Err(e) if e.is_offline() && scope != LogoutScope::Others => {
            note(&format!(
                "codeedex: signed out on this device; the server could not be told ({e})"
            ));
            0
        }
        Err(e) => return Err(e.into()),
    };
    if out.json {
        out.json(&serde_json::json!({ "sessions_ended": ended }));
    } else {
        match scope {
            LogoutScope::Others => out.line(&format!("ended {ended} other session(s)")),
            _ => out.line(&format!("logged out ({ended} session(s) ended)")),
        }
    }
    Ok(())
}

/// The signed-in account: asked of the server, or as last seen when offline.
pub(crate) async fn whoami(client: &Client, out: &Output, reach: Reach) -> Result<(), Failure> {
    if !matches!(client.auth_status(), AuthStatus::LoggedIn { .. }) {
        return Err(ClientError::NotLoggedIn.into());
    }
    let me = match reach {
        Reach::Online => client.refresh_account().await?,
        Reach::Offline => client.account().ok_or(ClientError::NotLoggedIn)?,
    };
    if out.json {
        out.json(&me);
        return Ok(());
    }
    if let Some(email) = &me.email {
        out.line(&format!("email     {email}"));
    }
    if let Some(phone) = &me.phone {
        out.line(&format!("phone     {phone}"));
    }
    out.line(&format!("user id   {}", me.id));
    out.line(&format!("since     {}", output::local_time(me.created_at)));
    Ok(())
}

pub(crate) async fn sessions(client: &Client, out: &Output) -> Result<(), Failure> {
    let sessions = client.sessions().await?;
    if out.json {
        out.json(&sessions);
        return Ok(());
    }
    let mut table = Table::new(&["session", "device", "signed in", "last used", ""]);
    for s in &sessions {
        table.row(vec![
            (s.id.to_string().chars().take(8).collect(), Style::Cyan),
            (
                s.device_name.clone().unwrap_or_else(|| "-".into()),
                Style::Plain,
            ),
            (output::local_time(s.created_at), Style::Plain),
            (output::local_time(s.last_used_at), Style::Plain),
            (
                if s.current {
                    "this device".into()
                } else {
                    String::new()
                },
                Style::Green,
            ),
        ]);
    }
    table.print(out);
    Ok(())
}
