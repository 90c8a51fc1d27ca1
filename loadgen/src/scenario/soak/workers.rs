//! The soak's load: what each worker does for the whole run, and what they
//! share (the interval's latencies and the counters the sampler reads).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use automerge::sync;
use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT};
use codeedex_schema::api::auth::{
    LogoutRequest, LogoutScope, RefreshRequest, SignInResponse, TokenPair,
};
use codeedex_schema::api::tasks::TaskPage;
use codeedex_schema::id::DocumentId;
use futures_util::StreamExt;
use serde_json::json;

use crate::peer::{self, Peer, Replicas};

/// What one interval's workers recorded.
#[derive(Default)]
pub(super) struct Interval {
    pub(super) edits: Vec<Duration>,
    pub(super) rest: Vec<Duration>,
}

#[derive(Default)]
pub(super) struct Shared {
    pub(super) interval: Mutex<Interval>,
    pub(super) sign_ins: AtomicU64,
    pub(super) refreshes: AtomicU64,
    pub(super) reconnects: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) stop: AtomicBool,
}

impl Shared {
    pub(super) fn edit(&self, latency: Duration) {
        self.interval
            .lock()
            .expect("never poisoned")
            .edits
            .push(latency);
    }
    pub(super) fn rest(&self, latency: Duration) {
        self.interval
            .lock()
            .expect("never poisoned")
            .rest
            .push(latency);
    }
    pub(super) fn error(&self, what: &str, e: impl std::fmt::Display) {
        if self.errors.fetch_add(1, Ordering::Relaxed) < 20 {
            eprintln!("soak: {what} failed: {e}");
        }
    }
}

/// A signed-in session whose access token is refreshed before it expires,
/// as a real device's is: the soak outlives the 15-minute tokens.
pub(super) struct Session {
    pub(super) server: String,
    pub(super) client: reqwest::Client,
    pub(super) pair: tokio::sync::Mutex<TokenPair>,
}

impl Session {
    pub(super) async fn sign_in(
        server: &str,
        client: &reqwest::Client,
        email: &str,
    ) -> anyhow::Result<Arc<Self>> {
        let pair = sign_in(server, client, email).await?.tokens;
        Ok(Arc::new(Self {
            server: server.to_owned(),
            client: client.clone(),
            pair: tokio::sync::Mutex::new(pair),
        }))
    }

    /// An access token valid for at least two more minutes.
    pub(super) async fn access_token(&self) -> anyhow::Result<String> {
        let mut pair = self.pair.lock().await;
        if pair.expires_at - chrono::Utc::now() < chrono::TimeDelta::minutes(2) {
            *pair = refresh(&self.server, &self.client, &pair.refresh_token).await?;
        }
        Ok(pair.access_token.clone())
    }
}

pub(super) async fn sign_in(
    server: &str,
    client: &reqwest::Client,
    email: &str,
) -> anyhow::Result<SignInResponse> {
    let sent = client
        .post(format!("{server}/v1/auth/otp"))
        .json(&json!({ "email": email }))
        .send()
        .await?;
    anyhow::ensure!(sent.status() == 202, "otp answered {}", sent.status());
    let verified = client
        .post(format!("{server}/v1/auth/verify"))
        .json(&json!({ "email": email, "code": "123456", "device_name": "soak" }))
        .send()
        .await?;
    anyhow::ensure!(
        verified.status() == 200,
        "verify answered {}",
        verified.status()
    );
    Ok(verified.json().await?)
}

pub(super) async fn refresh(
    server: &str,
    client: &reqwest::Client,
    refresh_token: &str,
) -> anyhow::Result<TokenPair> {
    let answered = client
        .post(format!("{server}/v1/auth/refresh"))
        .json(&RefreshRequest {
            refresh_token: refresh_token.to_owned(),
        })
        .send()
        .await?;
    anyhow::ensure!(
        answered.status() == 200,
        "refresh answered {}",
        answered.status()
    );
    Ok(answered.json().await?)
}

/// One device: one edit a second on its own document, acknowledged; every
/// thirtieth edit it drops the socket and joins again.
pub(super) async fn editor(e: usize, ws: String, session: Arc<Session>, shared: Arc<Shared>) {
    // A user's work moves on: every EDITS_PER_DOCUMENT edits the device
    // starts a new task, so that the live set of documents (and the
    // history each holds in memory) stays the same size for the whole run,
    // and a server that keeps nothing it should not stays flat. Documents
    // left behind are evicted once idle.
    const EDITS_PER_DOCUMENT: i64 = 300;
    let document = |generation: i64| {
        let mut seed = [0u8; 16];
        seed[..4].copy_from_slice(&(e as u32).to_le_bytes());
        seed[4..8].copy_from_slice(&(generation as u32).to_le_bytes());
        seed[8..].copy_from_slice(&u64::from(std::process::id()).to_le_bytes());
        DocumentId::from_random_bytes(seed)
    };
    let mut id = document(0);
    let peer_id = format!("soak-editor-{e}-{}", std::process::id());
    let mut replicas = Replicas::default();
    replicas
        .docs
        .insert(id, (AutoCommit::new(), sync::State::new()));
    let mut peer: Option<Peer> = None;
    let mut peer_token = String::new();
    let mut n = 0i64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while !shared.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let token = match session.access_token().await {
            Ok(token) => token,
            Err(err) => {
                shared.error("refresh", err);
                continue;
            }
        };
        // The server closes a socket when its token expires; a device
        // reconnects with the refreshed one first.
        if peer.is_some() && token != peer_token {
            peer = None;
            shared.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        if peer.is_none() {
            match peer::join(&ws, Some(&token), &peer_id, &[]).await {
                Ok(joined) => {
                    peer_token = token;
                    // A new connection starts a new sync state.
                    if let Some((_, state)) = replicas.docs.get_mut(&id) {
                        *state = sync::State::new();
                    }
                    peer = Some(joined);
                }
                Err(err) => {
                    shared.error("join", err);
                    continue;
                }
            }
        }
        let Some(connected) = peer.as_mut() else {
            continue;
        };
        n += 1;
        if n % EDITS_PER_DOCUMENT == 0 {
            replicas.docs.remove(&id);
            id = document(n / EDITS_PER_DOCUMENT);
            replicas
                .docs
                .insert(id, (AutoCommit::new(), sync::State::new()));
        }
        if let Some((doc, _)) = replicas.docs.get_mut(&id) {
            let _ = doc.put(ROOT, "n", n);
            let _ = doc.put(ROOT, "title", format!("soak task {e}, edit {n}"));
        }
        let started = Instant::now();
        match connected
            .sync_until_acknowledged(&mut replicas, id, Duration::from_secs(10))
            .await
        {
            Ok(()) => shared.edit(started.elapsed()),
            Err(err) => {
                shared.error("edit", err);
                peer = None;
                continue;
            }
        }
        if n % 30 == 0 {
            peer = None;
            shared.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Holds an idle socket open, reading (which answers the server's
/// keep-alive pings); when the server closes it at its token's expiry, it
/// joins again with a fresh token.
pub(super) async fn idle_socket(
    mut peer: Peer,
    peer_id: String,
    ws: String,
    session: Arc<Session>,
    shared: Arc<Shared>,
) {
    loop {
        while let Some(Ok(_)) = peer.stream.next().await {
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
        }
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        shared.reconnects.fetch_add(1, Ordering::Relaxed);
        let joined = async {
            let token = session.access_token().await?;
            peer::join(&ws, Some(&token), &peer_id, &[]).await
        }
        .await;
        match joined {
            Ok(again) => peer = again,
            Err(err) => {
                shared.error("idle socket", err);
                tokio::time::sleep(Duration::from_secs(1)).await;
                return;
            }
        }
    }
}

/// Sign in, refresh three times, log out, every two seconds.
pub(super) async fn sessions(server: String, client: reqwest::Client, shared: Arc<Shared>) {
    let mut i = 0usize;
    while !shared.stop.load(Ordering::Relaxed) {
        i += 1;
        let email = format!("bench-{}@example.com", 10 + i % 40);
        let outcome: anyhow::Result<()> = async {
            let mut pair = sign_in(&server, &client, &email).await?.tokens;
            shared.sign_ins.fetch_add(1, Ordering::Relaxed);
            for _ in 0..3 {
                pair = refresh(&server, &client, &pair.refresh_token).await?;
                shared.refreshes.fetch_add(1, Ordering::Relaxed);
            }
            let out = client
                .post(format!("{server}/v1/auth/logout"))
                .bearer_auth(&pair.access_token)
                .json(&LogoutRequest {
                    scope: LogoutScope::This,
                })
                .send()
                .await?;
            anyhow::ensure!(
                out.status().is_success(),
                "logout answered {}",
                out.status()
            );
            Ok(())
        }
        .await;
        if let Err(e) = outcome {
            shared.error("session", e);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Five REST requests a second, in turn: create a task, update it, list,
/// read it, and delete the oldest once more than 20 are live, so that the
/// list (and the user's root document's live entries) stays short.
pub(super) async fn rest(
    server: String,
    client: reqwest::Client,
    session: Arc<Session>,
    shared: Arc<Shared>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut live: std::collections::VecDeque<String> = Default::default();
    let mut i = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        i += 1;
        let started = Instant::now();
        let outcome: anyhow::Result<()> = async {
            let token = session.access_token().await?;
            match i % 5 {
                0 => {
                    let created = client
                        .post(format!("{server}/v1/tasks"))
                        .bearer_auth(&token)
                        .json(&json!({ "title": format!("rest task {i}") }))
                        .send()
                        .await?;
                    anyhow::ensure!(
                        created.status() == 201,
                        "create answered {}",
                        created.status()
                    );
                    let body: serde_json::Value = created.json().await?;
                    live.push_back(body["id"].as_str().unwrap_or_default().to_owned());
                }
                1 => {
                    let Some(id) = live.back() else { return Ok(()) };
                    let updated = client
                        .patch(format!("{server}/v1/tasks/{id}"))
                        .bearer_auth(&token)
                        .json(&json!({ "done": true }))
                        .send()
                        .await?;
                    anyhow::ensure!(
                        updated.status() == 200,
                        "update answered {}",
                        updated.status()
                    );
                }
                2 => {
                    let listed = client
                        .get(format!("{server}/v1/tasks"))
                        .bearer_auth(&token)
                        .send()
                        .await?;
                    anyhow::ensure!(listed.status() == 200, "list answered {}", listed.status());
                    // The verdict assumes the live data stays the same size;
                    // this checks it, and that the list shows exactly the
                    // tasks this worker created and has not deleted.
                    let page: TaskPage = listed.json().await?;
                    anyhow::ensure!(
                        page.next.is_none() && page.tasks.len() == live.len(),
                        "the list showed {} tasks{}, but {} are live",
                        page.tasks.len(),
                        if page.next.is_some() {
                            " and more pages"
                        } else {
                            ""
                        },
                        live.len()
                    );
                }
                3 => {
                    let Some(id) = live.back() else { return Ok(()) };
                    let read = client
                        .get(format!("{server}/v1/tasks/{id}"))
                        .bearer_auth(&token)
                        .send()
                        .await?;
                    anyhow::ensure!(read.status() == 200, "read answered {}", read.status());
                }
                _ => {
                    if live.len() > 20 {
                        let id = live.pop_front().unwrap_or_default();
                        let deleted = client
                            .delete(format!("{server}/v1/tasks/{id}"))
                            .bearer_auth(&token)
                            .send()
                            .await?;
                        anyhow::ensure!(
                            deleted.status().is_success(),
                            "delete answered {}",
                            deleted.status()
                        );
                    }
                }
            }
            Ok(())
        }
        .await;
        match outcome {
            Ok(()) => shared.rest(started.elapsed()),
            Err(e) => shared.error("REST", e),
        }
    }
}
