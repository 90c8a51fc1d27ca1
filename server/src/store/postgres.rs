//! The PostgreSQL engine: the same store, kept in a PostgreSQL database so
//! that several server nodes can share it (issue 14).
//!
//! [`PgEngine`] has one async method per [`Store`](super::Store) operation,
//! with the same name, arguments, results and errors as the sled engine;
//! the store's facade dispatches to it when the server is configured with a
//! database URL.
//!
//! What is kept, by concept, mirrors the sled side: `accounts` (users,
//! codes, sessions, refresh tokens, audit), `documents` (ownership, log,
//! snapshots, feed), `appends` (the batch writer), `sync_states`,
//! `task_index`, `usage` (the counters quotas are checked against),
//! `secrets` (the signing keys all nodes share), `doorbell` (NOTIFY and
//! LISTEN between nodes), `verify`. The tables are created by versioned migrations in
//! `server/migrations/postgres`, applied at connect by refinery.
//!
//! Durability: a PostgreSQL commit is durable when it returns, so there are
//! no tickets here; an append answers its caller only after the COMMIT that
//! holds it has returned.
//!
//! Errors: a lost connection, a server that shuts down or refuses
//! connections, or an exhausted pool is [`StoreError::Unavailable`], with
//! the cause logged at warn once per outage (never a parameter: nothing
//! secret reaches the log). Any other database error is
//! [`StoreError::Postgres`].

mod accounts;
mod appends;
mod documents;
mod doorbell;
mod import;
mod secrets;
mod sync_states;
mod task_index;
mod usage;
mod verify;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use tokio::sync::watch;
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use super::{StoreError, StoreHealth};

/// The schema's migrations, compiled in from `server/migrations/postgres`.
mod schema {
    refinery::embed_migrations!("migrations/postgres");
}

/// How long an operation waits for a free connection, or for a new one to
/// be made, before the store reports itself unavailable.
const POOL_WAIT: Duration = Duration::from_secs(10);

/// How long a connection may go without an answer from the database host
/// (to data sent, or to keepalive probes) before it is given up.
const SILENT_PEER: Duration = Duration::from_secs(30);

/// Serialises migrations of one database: nodes that start together must
/// not apply the same migration twice. An arbitrary constant, the key of a
/// PostgreSQL advisory lock ("codeedex" in ASCII).
const MIGRATION_LOCK: i64 = 0x636f_6465_6564_6578;

/// The PostgreSQL engine: a pool of connections and the writer task that
/// batches appends. Cheap to clone; the writer stops when the last clone is
/// dropped.
#[derive(Clone)]
pub(crate) struct PgEngine {
    /// This node's number, random at each start: rings carry it, so that a
    /// node ignores its own.
    node: u64,
    /// Where the database is, for the doorbell's own connection.
    config: tokio_postgres::Config,
    runtime: tokio::runtime::Handle,
    pool: Pool,
    appends: appends::Appender,
    outage: Arc<Outage>,
    /// Where the connections and the writer run; shut down with the last
    /// clone.
    _runtime: Arc<EngineRuntime>,
}

/// The engine's own Tokio runtime. Every connection's I/O task and the
/// append writer run on it, whichever runtime the callers are on: the HTTP
/// layer runs one runtime per worker thread, and a connection made on one
/// of them would stall whenever that worker is busy and die when it stops
/// (before the server's last writes at shutdown).
struct EngineRuntime(Option<tokio::runtime::Runtime>);

impl Drop for EngineRuntime {
    fn drop(&mut self) {
        // The last handle may be dropped inside another runtime, where a
        // blocking shutdown is not allowed; nothing on this one needs
        // waiting for (a transaction cut short is rolled back).
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Threads of the engine's runtime: connection tasks only encode, decode
/// and move bytes, and the writer is one task.
const RUNTIME_THREADS: usize = 2;

/// Makes the pool's connections on the engine's runtime. A connection the
/// database accepted is the proof that an outage is over (a connection
/// taken from the pool is not: it may have died unnoticed).
struct Connector {
    runtime: tokio::runtime::Handle,
    outage: Arc<Outage>,
}

type Connected =
    Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>;

/// Opens a connection and runs its I/O task on the current runtime.
async fn open(config: tokio_postgres::Config) -> Connected {
    let (client, connection) = config.connect(NoTls).await?;
    let task = tokio::spawn(async move {
        // Whoever used the connection hears of its end from its own
        // statement, and the outage is logged there once.
        if let Err(error) = connection.await {
            tracing::debug!(error = %error, "a PostgreSQL connection ended");
        }
    });
    Ok((client, task))
}

impl deadpool_postgres::Connect for Connector {
    fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Connected> + Send + '_>> {
        let config = config.clone();
        let runtime = self.runtime.clone();
        Box::pin(async move {
            let connected = match runtime.spawn(open(config.clone())).await {
                Ok(connected) => connected,
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                // The engine's runtime is shutting down: the engine is
                // being dropped, so a connection on the caller's runtime
                // serves the little that is left.
                Err(_) => open(config).await,
            };
            if connected.is_ok() {
                self.outage.over();
            }
            connected
        })
    }
}

impl std::fmt::Debug for PgEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEngine").finish_non_exhaustive()
    }
}

/// Whether the database is reachable, as far as the last operations saw,
/// published like the embedded engine's health (for the failure and
/// recovery counters). An outage is logged when it starts and when it
/// ends, rather than once per request that hits it.
///
/// Unlike the embedded engine's failure, an outage loses nothing that was
/// acknowledged (every acknowledged write was committed), so documents
/// loaded before it stay valid: there are no engine epochs here.
#[derive(Debug)]
struct Outage {
    health: watch::Sender<StoreHealth>,
}

impl Default for Outage {
    fn default() -> Self {
        Self {
            health: watch::Sender::new(StoreHealth {
                available: true,
                failures: 0,
                recoveries: 0,
            }),
        }
    }
}

impl Outage {
    /// An operation could not reach the database: logs the cause unless
    /// this outage was reported already.
    fn report(&self, cause: &dyn std::fmt::Display) {
        let started = self.health.send_if_modified(|health| {
            let started = health.available;
            if started {
                health.available = false;
                health.failures += 1;
            }
            started
        });
        if started {
            tracing::warn!(error = %cause, "the PostgreSQL store is unavailable");
        }
    }

    /// The database accepted a connection or answered a probe: the outage,
    /// if any, is over.
    fn over(&self) {
        if self.health.borrow().available {
            return;
        }
        let ended = self.health.send_if_modified(|health| {
            let ended = !health.available;
            if ended {
                health.available = true;
                health.recoveries += 1;
            }
            ended
        });
        if ended {
            tracing::info!("the PostgreSQL store is available again");
        }
    }
}

impl PgEngine {
    /// Connects to the database at `url` with a pool of up to `pool_size`
    /// connections, and brings its schema up to date. The URL (which may
    /// hold a password) is never logged.
    pub(crate) async fn connect(url: &str, pool_size: usize) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(StoreError::Postgres)?;
        // A database host that vanishes without closing its connections
        // must surface as an outage in seconds, not after the kernel's
        // default retransmission and keepalive times (minutes to hours):
        // unless the URL says otherwise, data unacknowledged for
        // `SILENT_PEER` ends a connection, and idle ones are probed.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(POOL_WAIT);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(SILENT_PEER);
        }
        if config.get_keepalives_idle() == tokio_postgres::Config::new().get_keepalives_idle() {
            config.keepalives_idle(SILENT_PEER);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("store-postgres")
            .enable_all()
            .build()
            .map_err(|error| {
                tracing::error!(error = %error, "starting the PostgreSQL store's threads failed");
                StoreError::Unavailable
            })?;
        let handle = runtime.handle().clone();
        let outage = Arc::new(Outage::default());
        let runtime = Arc::new(EngineRuntime(Some(runtime)));
        let manager = Manager::from_connect(
            config.clone(),
            Connector {
                runtime: handle.clone(),
                outage: Arc::clone(&outage),
            },
            ManagerConfig {
                // A connection that the server closed is noticed by the
                // next query, which reports the store unavailable; the
                // pool then drops it. Checking each connection with a
                // query before every use would cost a round trip each.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .build()
            .map_err(|_| StoreError::Unavailable)?;
        let node = rand::random::<u64>();
        let engine = Self {
            node,
            config,
            runtime: handle.clone(),
            appends: appends::Appender::start(&handle, pool.clone(), Arc::clone(&outage), node),
            pool,
            outage,
            _runtime: runtime,
        };
        engine.migrate().await?;
        Ok(engine)
    }

    /// Applies the migrations this build has and the database lacks, one
    /// node at a time.
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let fail = |e| self.fail(e);
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(fail)?;
        let client_ref: &mut tokio_postgres::Client = &mut client;
        // Grouped: every pending migration in one transaction (PostgreSQL's
        // DDL is transactional), so a schema is either wholly new or wholly
        // old. refinery refuses a database with a migration this build does
        // not have (written by a newer build) or one that differs from ours.
        let applied = schema::migrations::runner()
            .set_grouped(true)
            .run_async(client_ref)
            .await
            .map_err(|e| StoreError::Migration(Box::new(e)));
        // The lock is the session's: unlock it before the connection goes
        // back to the pool, whatever the outcome.
        client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(fail)?;
        applied.map(|_| ())
    }

    /// This node's number in the rings it sends.
    pub(crate) fn node(&self) -> u64 {
        self.node
    }

    /// Starts listening for the other nodes' appends (see `doorbell`).
    pub(crate) fn listen(&self) -> tokio::sync::mpsc::Receiver<crate::store::Heard> {
        doorbell::listen(&self.runtime, self.config.clone())
    }

    /// Runs one statement, prepared once per connection, on a pooled
    /// connection: the operations that need no transaction of their own.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(|e| self.fail(e))?;
        client
            .query(&statement, params)
            .await
            .map_err(|e| self.fail(e))
    }

    /// [`PgEngine::query`] for at most one row.
    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(|e| self.fail(e))?;
        client
            .query_opt(&statement, params)
            .await
            .map_err(|e| self.fail(e))
    }

    /// [`PgEngine::query`] for exactly one row.
    async fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<tokio_postgres::Row, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(|e| self.fail(e))?;
        client
            .query_one(&statement, params)
            .await
            .map_err(|e| self.fail(e))
    }

    /// [`PgEngine::query`] for a statement that returns no rows: how many
    /// it touched.
    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(|e| self.fail(e))?;
        client
            .execute(&statement, params)
            .await
            .map_err(|e| self.fail(e))
    }

    /// A connection from the pool, or [`StoreError::Unavailable`].
    async fn client(&self) -> Result<Object, StoreError> {
        match self.pool.get().await {
            Ok(client) => Ok(client),
            Err(PoolError::Backend(e)) => Err(self.fail(e)),
            Err(e) => {
                self.outage.report(&e);
                Err(StoreError::Unavailable)
            }
        }
    }

    /// The store's error for a database error, logging an outage once.
    fn fail(&self, error: tokio_postgres::Error) -> StoreError {
        classify(error, &self.outage)
    }

    /// Follows whether the database is reachable; it changes when an
    /// operation first fails to reach it and when one reaches it again.
    pub(crate) fn health(&self) -> watch::Receiver<StoreHealth> {
        self.outage.health.subscribe()
    }

    /// True when the database answers; for the readiness probe.
    pub(crate) async fn is_healthy(&self) -> bool {
        match self.client().await {
            Ok(client) => client
                .simple_query("SELECT 1")
                .await
                .map(|_| self.outage.over())
                .map_err(|e| self.fail(e))
                .is_ok(),
            Err(_) => false,
        }
    }
}

/// Whether `error` means the database cannot be reached (the connection is
/// gone, the server is shutting down or refusing connections) rather than
/// that this statement failed.
fn is_outage(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    match error.code() {
        Some(code) => {
            let code = code.code();
            // Class 08: connection exception; 53: insufficient resources
            // (too many connections, out of memory or disk); 57P0x: the
            // server is shutting down or starting; 58: system (IO) error.
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("58")
                || [
                    SqlState::ADMIN_SHUTDOWN.code(),
                    SqlState::CRASH_SHUTDOWN.code(),
                    SqlState::CANNOT_CONNECT_NOW.code(),
                ]
                .contains(&code)
        }
        // No SQLSTATE: the error came from the connection itself (an IO
        // error, a timeout, a protocol violation), not from a statement.
        None => {
            std::error::Error::source(error).is_some_and(|source| source.is::<std::io::Error>())
        }
    }
}

fn classify(error: tokio_postgres::Error, outage: &Outage) -> StoreError {
    if is_outage(&error) {
        outage.report(&error);
        StoreError::Unavailable
    } else {
        StoreError::Postgres(error)
    }
}

/// Whether a transaction failed only because it raced another one and may
/// simply run again.
fn is_retryable(error: &StoreError) -> bool {
    matches!(error, StoreError::Postgres(e)
        if e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE)
            || e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED))
}

/// How often a transaction that lost a race is run again before its error
/// is reported.
const RETRIES: usize = 5;

/// A sequence number or counter read from a bigint column, which the
/// schema keeps non-negative.
fn unsigned(value: i64, table: &'static str, what: &'static str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Malformed { tree: table, what })
}

/// A sequence number or counter for a bigint column.
fn signed(value: u64, table: &'static str, what: &'static str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Malformed { tree: table, what })
}

/// A 16-byte id read from a bytea column.
fn id16(bytes: &[u8], table: &'static str) -> Result<[u8; 16], StoreError> {
    bytes.try_into().map_err(|_| StoreError::Malformed {
        tree: table,
        what: "id is not 16 bytes",
    })
}
