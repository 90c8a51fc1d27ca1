//! The HTTP layer: the only module that knows actix-web.
//!
//! Each submodule is one group of routes. Handlers parse the request into
//! schema types, call the service, and render the answer; errors become
//! RFC 9457 problem documents through [`problem`].

mod account;
mod auth_routes;
mod caller;
mod client;
mod health;
mod json_body;
mod openapi;
pub mod problem;
mod sync_socket;
mod tasks;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use actix_web::web;

use crate::auth::Auth;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::sync::peer::PeerContext;

/// Request bodies of the auth endpoints are capped at this many bytes.
pub const MAX_JSON_BODY: usize = 16 * 1024;

/// What every handler can reach.
#[derive(Debug)]
pub struct AppState {
    /// Sign-in and sessions.
    pub auth: Arc<Auth>,
    /// Documents, peer bindings and sync limits.
    pub sync: PeerContext,
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
}

/// Registers every route.
pub fn configure(state: web::Data<AppState>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(state)
            .app_data(problem::json_config())
            .app_data(problem::path_config())
            .configure(health::configure)
            .configure(auth_routes::configure)
            .configure(account::configure)
            .configure(tasks::configure)
            .configure(sync_socket::configure)
            .configure(openapi::configure);
    }
}
