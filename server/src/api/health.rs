//! Probes and metrics: `/healthz` (the process answers), `/readyz` (the store
//! answers), `/metrics` (Prometheus text).

use actix_web::{HttpResponse, web};

use super::AppState;
use crate::metrics::Gauge;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.store.is_healthy().await {
        HttpResponse::Ok()
            .content_type("text/plain")
            .body("ready\n")
    } else {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("store unavailable\n")
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    // What an operator watches to tell load from a leak: open sockets, and
    // documents held in memory (they leave it when idle).
    let gauges = [
        Gauge {
            name: "codeedex_sync_connections",
            help: "Sync connections open now.",
            value: state.sync.registry.total_connections() as u64,
        },
        Gauge {
            name: "codeedex_documents_in_memory",
            help: "Documents loaded in memory now.",
            value: state.sync.hub.live_count() as u64,
        },
    ];
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render(&gauges))
}
