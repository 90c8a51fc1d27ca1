//! Signing bench identities in, through the real HTTP endpoints.

use anyhow::{Context, bail};
use serde::Deserialize;

/// What a sign-in yields.
#[derive(Debug, Clone, Deserialize)]
pub struct SignedIn {
    /// The access token.
    pub access_token: String,
}

/// Requests a code for `email` and verifies the fixed bench code.
pub async fn sign_in(
    client: &reqwest::Client,
    server: &str,
    email: &str,
    code: &str,
) -> anyhow::Result<SignedIn> {
    let sent = client
        .post(format!("{server}/v1/auth/otp"))
        .json(&serde_json::json!({ "email": email }))
        .send()
        .await?;
    if sent.status() != 202 {
        bail!("code request for {email} answered {}", sent.status());
    }
    let verified = client
        .post(format!("{server}/v1/auth/verify"))
        .json(&serde_json::json!({ "email": email, "code": code, "device_name": "loadgen" }))
        .send()
        .await?;
    if verified.status() != 200 {
        bail!(
            "verification for {email} answered {}: {}",
            verified.status(),
            verified.text().await.unwrap_or_default()
        );
    }
    verified.json().await.context("sign-in body")
}
