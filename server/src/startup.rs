//! Building and running the application.
//!
//! `Application::build` opens the store, loads the keys, binds the listener
//! (port 0 picks a free port, for tests) and assembles the HTTP server.
//! `Application::run_until_stopped` serves until SIGTERM or ctrl-c; then
//! it tells every sync connection to go away (close 1001, after which each
//! saves its sync states), stops accepting, lets in-flight requests finish,
//! and flushes the store, all within the shutdown timeout.

use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;

use crate::api::{self, AppState};
use crate::auth::keys::ServerKeys;
use crate::auth::{Auth, SessionNotice};
use crate::configuration::{LogFormat, MigrateCommand, Settings};
use crate::delivery::CodeDelivery;
use crate::metrics::Metrics;
use crate::store::{Store, StoreOptions};
use crate::sync::connection::PeerContext;
use crate::sync::gate::ConnectionGate;
use crate::sync::hub::DocumentHub;
use crate::sync::registry::PeerRegistry;
use crate::tasks::Tasks;
use crate::telemetry;

/// A built server, bound and ready to run.
pub(crate) struct Application {
    port: u16,
    server: api::HttpServerHandle,
    store: Store,
    hub: Arc<DocumentHub>,
    registry: Arc<PeerRegistry>,
    document_idle: Duration,
    shutdown_timeout: Duration,
    shutting_down: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Opens the store, loads keys and binds the listener.
    pub(crate) async fn build(settings: Settings) -> anyhow::Result<Self> {
        let (store, keys) = match &settings.database {
            // Everything, keys included, in the database the nodes share.
            Some(database) => {
                let store = Store::connect(database.url.expose_secret(), database.pool_size)
                    .await
                    .context("cannot open the PostgreSQL store")?;
                let keys = ServerKeys::shared(&store).await?;
                (store, keys)
            }
            None => {
                std::fs::create_dir_all(&settings.data_dir).with_context(|| {
                    format!(
                        "cannot create data directory {}",
                        settings.data_dir.display()
                    )
                })?;
                let store = Store::open_with(StoreOptions {
                    dir: settings.data_dir.clone(),
                    cache_bytes: settings.store_cache_bytes,
                })
                .with_context(|| {
                    format!("cannot open the store in {}", settings.data_dir.display())
                })?;
                let keys = ServerKeys::load_or_create(&settings.data_dir)?;
                (store, keys)
            }
        };
        let metrics = Arc::new(Metrics::default());
        let delivery = CodeDelivery::from_settings(
            &settings.delivery,
            settings.otp.ttl.as_secs().div_ceil(60),
        )?;
        let auth = Arc::new(Auth::new(
            &settings,
            store.clone(),
            keys,
            delivery,
            Arc::clone(&metrics),
        ));
        let storage_id = store
            .server_storage_id(|| uuid::Uuid::new_v4().to_string())
            .await?;
        let actor = automerge::ActorId::from(
            uuid::Uuid::parse_str(&storage_id)
                .map(|u| u.as_bytes().to_vec())
                .unwrap_or_else(|_| storage_id.as_bytes().to_vec()),
        );
        let hub = Arc::new(DocumentHub::new(
            store.clone(),
            actor,
            settings.hub_limits,
            Arc::clone(&metrics),
        ));
        // On a database other nodes share, their appends ring here: the hub
        // applies them to the documents it has in memory.
        if let Some((node, heard)) = store.listen() {
            let auth = Arc::clone(&auth);
            tokio::spawn(crate::sync::doorbell::answer(
                Arc::clone(&hub),
                node,
                heard,
                move |notice| match notice {
                    SessionNotice::Ended(session) => auth.session_ended_elsewhere(session),
                    SessionNotice::MayHaveEnded => auth.sessions_may_have_ended(),
                },
            ));
        }
        let registry = Arc::new(PeerRegistry::default());
        let sync = PeerContext {
            hub: Arc::clone(&hub),
            store: store.clone(),
            registry: Arc::clone(&registry),
            auth: Arc::clone(&auth),
            server_peer_id: format!("codeedex-server-{}", uuid::Uuid::new_v4()),
            server_storage_id: storage_id,
            limits: settings.sync_limits,
            metrics: Arc::clone(&metrics),
        };
        let (shutting_down, shutting_down_rx) = tokio::sync::watch::channel(false);
        let state = AppState {
            auth,
            sync,
            tasks: Tasks::new(Arc::clone(&hub), store.clone()),
            next_connection: Default::default(),
            allowed_origins: settings.allowed_origins.clone(),
            store: store.clone(),
            metrics: Arc::clone(&metrics),
            trusted_proxies: settings.trusted_proxies.clone(),
            shutting_down: shutting_down_rx,
            connection_gate: std::sync::Mutex::new(ConnectionGate::new(
                settings.gate_limits,
                std::time::Instant::now(),
            )),
        };
        let listener = TcpListener::bind(settings.listen)
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let address = listener.local_addr()?;
        let server = api::http_server(
            listener,
            state,
            settings.workers,
            settings.shutdown_timeout.as_std(),
        )?;
        match &settings.database {
            Some(_) => {
                tracing::info!(address = %address, store = "postgres", profile = ?settings.profile, "listening")
            }
            None => {
                tracing::info!(address = %address, store = "embedded", data_dir = %settings.data_dir.display(), profile = ?settings.profile, "listening")
            }
        }
        Ok(Self {
            port: address.port(),
            server,
            store,
            hub,
            registry,
            document_idle: settings.document_idle.as_std(),
            shutdown_timeout: settings.shutdown_timeout.as_std(),
            shutting_down,
        })
    }

    /// Serves until SIGTERM or ctrl-c, then shuts down cleanly (see the
    /// module documentation).
    pub(crate) async fn run_until_stopped(self) -> anyhow::Result<()> {
        let hub = Arc::clone(&self.hub);
        let idle = self.document_idle;
        let evictor = tokio::spawn(async move {
            let mut every = tokio::time::interval(idle.max(Duration::from_secs(1)) / 2);
            loop {
                every.tick().await;
                let evicted = hub.evict_idle(idle);
                if evicted > 0 {
                    tracing::debug!(evicted, live = hub.live_count(), "evicted idle documents");
                }
            }
        });
        // The store reports its failures and recoveries; the hub then
        // forgets documents that may hold changes the disk never took.
        let follower = tokio::spawn({
            let hub = Arc::clone(&self.hub);
            async move { hub.follow_store().await }
        });
        let handle = self.server.handle();
        let mut server = self.server;
        let served = tokio::select! {
            served = &mut server => served,
            () = stop_signal() => {
                let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
                let open = self.registry.total_connections();
                tracing::info!(sync_connections = open, "shutting down: telling sync peers to reconnect later");
                let _ = self.shutting_down.send(true);
                // Each connection closes with 1001 and saves its sync states
                // as it ends; wait for them, but not past the deadline.
                while self.registry.total_connections() > 0
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let left = self.registry.total_connections();
                if left > 0 {
                    tracing::warn!(sync_connections = left, "sync connections still open at the shutdown deadline");
                }
                // Stop accepting and let requests in flight finish (the
                // HTTP server waits for them up to the same timeout). The server future
                // must go on being polled for the stop to complete.
                let ((), served) = tokio::join!(handle.stop(true), server);
                served
            }
        };
        evictor.abort();
        follower.abort();
        served.context("the HTTP server failed")?;
        self.store
            .persist()
            .await
            .context("cannot flush the store at shutdown")?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Resolves on SIGTERM (how service managers stop a process) or ctrl-c.
async fn stop_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; only ctrl-c stops the server cleanly");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// The whole program: settings from the command line and environment,
/// logging, then the server until it is told to stop.
pub fn main_with_args(args: impl IntoIterator<Item = String>) -> ExitCode {
    let mut args: Vec<String> = args.into_iter().collect();
    if args.get(1).map(String::as_str) == Some("migrate") {
        args.remove(1);
        return migrate_main(args);
    }
    let today = chrono::Utc::now().date_naive();
    let settings = match Settings::load(args, today) {
        Ok(settings) => settings,
        Err(e) => return usage_error("codeedex-server", &e),
    };
    telemetry::init(&settings.log, settings.log_format);
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    let result = api::block_on(async move {
        let app = Application::build(settings).await?;
        app.run_until_stopped().await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "server failed");
            eprintln!("codeedex-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Reports a command line that could not be parsed: clap's own errors (and
/// `--help`, `--version`) print themselves; the rest are named after
/// `command`. Usage errors exit with 2, help and version with success.
fn usage_error(command: &str, e: &anyhow::Error) -> ExitCode {
    if let Some(clap_error) = e.downcast_ref::<clap::Error>() {
        let _ = clap_error.print();
        return if clap_error.use_stderr() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    eprintln!("{command}: {e:#}");
    ExitCode::from(2)
}

/// `codeedex-server migrate`: copies a data directory's embedded store into
/// an empty PostgreSQL database (see [`crate::store::migration`]), with
/// progress on stderr and the summary on stdout. Exits nonzero when the
/// copy was refused, failed, or differs from the original.
fn migrate_main(args: Vec<String>) -> ExitCode {
    let command = match MigrateCommand::parse_from_args(args) {
        Ok(command) => command,
        Err(e) => return usage_error("codeedex-server migrate", &e),
    };
    // Only warnings: they say why the database could not be reached.
    telemetry::init("warn", LogFormat::Text);
    let keys = match ServerKeys::load_existing(&command.from_data_dir) {
        Ok(keys) => keys,
        Err(e) => {
            eprintln!("codeedex-server migrate: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut progress = |step: crate::store::migration::Progress| match step {
        crate::store::migration::Progress::Copied {
            kind,
            copied,
            total,
        } => eprintln!("copied {copied} of {total} {}", kind.name()),
        crate::store::migration::Progress::Verified { checked, total } => {
            eprintln!("verified the heads of {checked} of {total} documents")
        }
    };
    let migrated = api::block_on(crate::store::migration::migrate(
        &command.from_data_dir,
        command.to_database_url.expose_secret(),
        &keys.named(),
        &mut progress,
    ));
    let summary = match migrated {
        Ok(summary) => summary,
        Err(e) => {
            eprintln!("codeedex-server migrate: {:#}", anyhow::Error::new(e));
            return ExitCode::FAILURE;
        }
    };
    println!("{:<16} {:>12} {:>12}", "kind", "embedded", "postgresql");
    for count in &summary.counts {
        let mark = if count.embedded == count.postgres {
            ""
        } else {
            "  MISMATCH"
        };
        println!(
            "{:<16} {:>12} {:>12}{mark}",
            count.kind.name(),
            count.embedded,
            count.postgres
        );
    }
    println!(
        "documents whose heads were compared: {}",
        summary.documents_checked
    );
    for warning in &summary.warnings {
        println!("warning: {warning}");
    }
    if summary.is_exact() {
        println!("the database holds the same as the embedded store");
        ExitCode::SUCCESS
    } else {
        for mismatch in &summary.mismatches {
            println!("mismatch: {mismatch}");
        }
        eprintln!(
            "codeedex-server migrate: the copy differs from the embedded store in {} ways",
            summary.mismatches.len()
        );
        ExitCode::FAILURE
    }
}
