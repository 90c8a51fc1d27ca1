//! The HTTP layer: the only module that knows actix-web.
//!
//! Each submodule is one group of routes. Handlers parse the request into
//! schema types, call the service, and render the answer; errors become
//! RFC 9457 problem documents through [`problem`].

mod account;
mod auth_routes;
mod browser_session;
mod caller;
mod health;
mod json_body;
mod openapi;
mod origin;
pub(crate) mod problem;
mod sync_socket;
mod tasks;
mod web_app;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use actix_web::web;

use crate::auth::Auth;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::sync::connection::PeerContext;
use crate::tasks::Tasks;

/// Request bodies of the auth endpoints are capped at this many bytes.
pub const MAX_JSON_BODY: usize = 16 * 1024;

/// What every handler can reach.
#[derive(Debug)]
pub struct AppState {
    /// Sign-in and sessions.
    pub auth: Arc<Auth>,
    /// Documents, peer bindings and sync limits.
    pub sync: PeerContext,
    /// Creating, listing, changing and deleting tasks over REST.
    pub tasks: Tasks,
    /// Numbers sync connections.
    pub next_connection: AtomicU64,
    /// Origins allowed to open sync sockets; empty allows any.
    pub allowed_origins: Vec<String>,
    /// The store, for readiness checks.
    pub store: Store,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Peers whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<IpAddr>,
    /// Turns true when the server begins to shut down: every sync
    /// connection then closes with 1001 ("going away, reconnect").
    pub shutting_down: tokio::sync::watch::Receiver<bool>,
    /// Paces new sync connections and caps how many are open.
    pub connection_gate: std::sync::Mutex<crate::sync::gate::ConnectionGate>,
}

/// A running HTTP server; awaiting it waits until it has stopped (after
/// SIGTERM or ctrl-c, once in-flight requests finished).
pub type HttpServerHandle = actix_web::dev::Server;

/// Runs a future on the HTTP layer's runtime (actix's system on tokio).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    actix_web::rt::System::new().block_on(future)
}

/// Assembles the HTTP server on an already-bound listener: every route, the
/// request log (path only, never the query string, which can carry tokens),
/// request counters, and the timeouts.
/// The server does not handle signals itself: [`crate::startup`] does, so
/// that sync connections are told to go away before the HTTP server waits,
/// at most `shutdown_timeout`, for requests in flight.
pub fn http_server(
    listener: std::net::TcpListener,
    state: AppState,
    workers: Option<usize>,
    shutdown_timeout: std::time::Duration,
) -> std::io::Result<HttpServerHandle> {
    use actix_web::dev::Service;
    use std::time::{Duration, Instant};

    let metrics = Arc::clone(&state.metrics);
    let state = web::Data::new(state);
    let mut server = actix_web::HttpServer::new(move || {
        let metrics = Arc::clone(&metrics);
        actix_web::App::new()
            .configure(configure(state.clone()))
            .default_service(web::to(problem::not_found))
            .wrap_fn(move |req, srv| {
                let method = req.method().clone();
                let path = req.path().to_owned();
                let started = Instant::now();
                let metrics = Arc::clone(&metrics);
                let response = srv.call(req);
                async move {
                    let response = response.await?;
                    let status = response.status();
                    Metrics::bump(&metrics.http_requests);
                    if status.is_server_error() {
                        Metrics::bump(&metrics.http_server_errors);
                    }
                    tracing::info!(
                        target: "codeedex_server::http",
                        %method, %path, status = status.as_u16(),
                        elapsed_ms = format!("{:.2}", started.elapsed().as_secs_f64() * 1000.0),
                        "request"
                    );
                    Ok(response)
                }
            })
    })
    .client_request_timeout(Duration::from_secs(10))
    .client_disconnect_timeout(Duration::from_secs(5))
    .disable_signals()
    .shutdown_timeout(shutdown_timeout.as_secs())
    // Sync traffic is many small frames in both directions. With Nagle's
    // algorithm on, a frame written while an earlier one is unacknowledged
    // waits for the peer's delayed ACK (40 ms on Linux), which under load
    // put tens of milliseconds on edits that take one. Set before `listen`,
    // which reads it.
    .tcp_nodelay(true)
    .listen(listener)?;
    if let Some(workers) = workers {
        server = server.workers(workers);
    }
    Ok(server.run())
}

/// Registers every route.
pub fn configure(state: web::Data<AppState>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(state)
            .app_data(problem::json_config())
            .app_data(problem::path_config())
            .configure(health::configure)
            .configure(auth_routes::configure)
            .configure(browser_session::configure)
            .configure(account::configure)
            .configure(tasks::configure)
            .configure(sync_socket::configure)
            .configure(openapi::configure)
            .configure(web_app::configure);
    }
}
