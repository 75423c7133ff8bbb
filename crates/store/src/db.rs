//! Connecting to the database (PostgreSQL or SQLite, chosen by the URL), applying the embedded
//! migrations, readiness probes, and [`StoreTx`], a transaction on either backend (with
//! [`on_backend!`](crate::on_backend) to run one statement text on whichever it holds).

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{PgPool, SqlitePool};

use crate::error::StoreError;

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/sqlite");

/// Connections in a Postgres pool opened by [`Database::connect`].
pub const POSTGRES_POOL_SIZE: u32 = 16;
/// Connections in a SQLite pool opened by [`Database::connect`] (one writer at a time; the rest
/// read concurrently thanks to WAL).
const SQLITE_POOL_SIZE: u32 = 8;
/// How long a SQLite writer waits for the write lock before failing with `SQLITE_BUSY`.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`Database::ping`] waits for an answer.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection that sat idle in the pool longer than this is pinged before it is handed out.
pub(crate) const POSTGRES_PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// The options of every sparc Postgres pool, with `size` connections.
///
/// sqlx pings each connection before handing it out by default: one extra round trip per
/// statement batch, a quarter of the work of a one-INSERT command. Here only a connection that
/// sat idle for over a second is pinged (one that broke while idle, say across a database
/// restart, is replaced instead of failing a request); a busy pool hands connections straight
/// on, and one that breaks mid-use fails that query and is dropped from the pool.
pub fn postgres_pool_options(size: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(size)
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for > POSTGRES_PING_IDLE_AFTER {
                    sqlx::Connection::ping(connection).await?;
                }
                Ok(true)
            })
        })
}

/// How the connections of a [`Database::dedicated`] pool plan their prepared statements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Planning {
    /// As PostgreSQL chooses: right for statements whose best plan depends on their values
    /// (a generic plan of the scheduler's due query scans the whole tasks table).
    Auto,
    /// Once, generically (`plan_cache_mode = force_generic_plan`), for the same few statements
    /// run over and over whose generic plan is the index scan they need. Left to choose,
    /// PostgreSQL plans the loops' log read and outbox insert again at every execution, which
    /// costs more than running them: their one-off plans look cheaper than the generic one.
    Once,
}

/// Which database engine a [`Database`] runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// PostgreSQL (production).
    Postgres,
    /// SQLite (the embedded single-process mode).
    Sqlite,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Postgres => "postgres",
            Self::Sqlite => "sqlite",
        })
    }
}

/// A connection pool to the event store and read models. Cheap to clone (the pools are shared).
#[derive(Clone, Debug)]
pub enum Database {
    /// A PostgreSQL pool.
    Postgres(PgPool),
    /// A SQLite pool (WAL, foreign keys on, 5 s busy timeout).
    Sqlite(SqlitePool),
}

impl Database {
    /// Connects to `url`: `postgres://…`, `postgresql://…`, or `sqlite://path` / `sqlite:path`.
    ///
    /// For SQLite the file and its parent directory are created if missing, the journal is put
    /// in WAL mode, foreign keys are enforced and writers wait up to 5 s for the write lock.
    /// The migrations are not applied: call [`Database::migrate`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_pool_size(url, POSTGRES_POOL_SIZE).await
    }

    /// [`Database::connect`] with `pool_size` connections for PostgreSQL (at least 1).
    pub async fn connect_with_pool_size(url: &str, pool_size: u32) -> Result<Self, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = postgres_pool_options(pool_size.max(1)).connect(url).await?;
            Ok(Self::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .foreign_keys(true);
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            let pool_options = if in_memory {
                // One connection keeps the in-memory database alive and avoids shared-cache
                // table locks.
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
            } else {
                if let Some(parent) = options.get_filename().parent()
                    && parent != Path::new("")
                {
                    tokio::fs::create_dir_all(parent).await?;
                }
                SqlitePoolOptions::new().max_connections(SQLITE_POOL_SIZE)
            };
            Ok(Self::Sqlite(pool_options.connect_with(options).await?))
        } else {
            // Never echo the URL: it may hold a password.
            let scheme = url.split(':').next().unwrap_or_default();
            Err(StoreError::UnsupportedUrl(format!("scheme {scheme:?}")))
        }
    }

    /// A handle with a pool of its own, of `connections` (at least 1), for work that must not
    /// wait for the requests' connections (the projection loops, the outbox relay, the
    /// background work); SQLite, one file with one writer, shares this handle's pool. Its
    /// connections carry `name` as their `application_name`, so that an operator can tell
    /// them apart in `pg_stat_activity`, and plan as `planning` says.
    pub fn dedicated(&self, name: &str, connections: u32, planning: Planning) -> Self {
        match self {
            Self::Postgres(pool) => {
                let mut options = pool
                    .connect_options()
                    .as_ref()
                    .clone()
                    .application_name(name);
                if planning == Planning::Once {
                    options = options.options([("plan_cache_mode", "force_generic_plan")]);
                }
                Self::Postgres(postgres_pool_options(connections.max(1)).connect_lazy_with(options))
            }
            Self::Sqlite(_) => self.clone(),
        }
    }

    /// The engine this database runs on.
    pub fn backend(&self) -> Backend {
        match self {
            Self::Postgres(_) => Backend::Postgres,
            Self::Sqlite(_) => Backend::Sqlite,
        }
    }

    fn migrator(&self) -> &'static Migrator {
        match self {
            Self::Postgres(_) => &POSTGRES_MIGRATIONS,
            Self::Sqlite(_) => &SQLITE_MIGRATIONS,
        }
    }

    /// Applies the embedded migrations of this backend that are not applied yet
    /// (`migrations/postgres` or `migrations/sqlite`).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Self::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await?,
            Self::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await?,
        }
        Ok(())
    }

    /// Whether some embedded migration is not (successfully) applied yet: the database is not
    /// ready for this binary.
    pub async fn pending_migrations(&self) -> Result<bool, StoreError> {
        let applied: Vec<i64> = match self {
            Self::Postgres(pool) => {
                let exists: bool =
                    sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                        .fetch_one(pool)
                        .await?;
                if !exists {
                    return Ok(true);
                }
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                    .fetch_all(pool)
                    .await?
            }
            Self::Sqlite(pool) => {
                let exists: bool = sqlx::query_scalar(
                    "SELECT count(*) > 0 FROM sqlite_master \
                     WHERE type = 'table' AND name = '_sqlx_migrations'",
                )
                .fetch_one(pool)
                .await?;
                if !exists {
                    return Ok(true);
                }
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                    .fetch_all(pool)
                    .await?
            }
        };
        Ok(self
            .migrator()
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .any(|m| !applied.contains(&m.version)))
    }

    /// Whether the database answers a trivial query within 2 s.
    pub async fn ping(&self) -> bool {
        let query = async {
            match self {
                Self::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.is_ok(),
                Self::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.is_ok(),
            }
        };
        tokio::time::timeout(PING_TIMEOUT, query)
            .await
            .unwrap_or(false)
    }

    /// Begins a transaction. On SQLite it is `BEGIN IMMEDIATE`: it takes the write lock at once,
    /// so a transaction that reads and then writes never fails with a stale snapshot.
    pub async fn begin(&self) -> Result<StoreTx, StoreError> {
        Ok(match self {
            Self::Postgres(pool) => StoreTx::Postgres(pool.begin().await?),
            Self::Sqlite(pool) => StoreTx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
        })
    }
}

/// A transaction on either backend, from [`Database::begin`].
///
/// Projectors run their own SQL on the inner transaction by matching on the variant
/// (`StoreTx::Postgres(tx) => sqlx::query(…).execute(&mut **tx)`), save their checkpoint with
/// [`StoreTx::save_checkpoint`] and [`commit`](StoreTx::commit) both at once. Dropping it
/// without committing rolls back.
#[derive(Debug)]
pub enum StoreTx {
    /// A PostgreSQL transaction (READ COMMITTED).
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    /// A SQLite transaction holding the write lock.
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
}

impl StoreTx {
    /// The engine this transaction runs on.
    pub fn backend(&self) -> Backend {
        match self {
            Self::Postgres(_) => Backend::Postgres,
            Self::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Commits everything done in the transaction.
    pub async fn commit(self) -> Result<(), StoreError> {
        match self {
            Self::Postgres(tx) => tx.commit().await?,
            Self::Sqlite(tx) => tx.commit().await?,
        }
        Ok(())
    }

    /// Rolls the transaction back.
    pub async fn rollback(self) -> Result<(), StoreError> {
        match self {
            Self::Postgres(tx) => tx.rollback().await?,
            Self::Sqlite(tx) => tx.rollback().await?,
        }
        Ok(())
    }
}

/// Runs `$body` once per backend, so one SQL text (with `$n` placeholders) serves both: the
/// body is compiled for each. The first word names what is matched:
///
/// - `on_backend!(Database db, pool => body)`: `pool` is the backend's connection pool;
/// - `on_backend!(StoreTx tx, conn => body)`: `conn` is the connection inside the transaction.
#[macro_export]
macro_rules! on_backend {
    (Database $db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::Database::Postgres($pool) => $body,
            $crate::Database::Sqlite($pool) => $body,
        }
    };
    (StoreTx $tx:expr, $conn:ident => $body:expr) => {
        match $tx {
            $crate::StoreTx::Postgres(tx) => {
                let $conn = &mut **tx;
                $body
            }
            $crate::StoreTx::Sqlite(tx) => {
                let $conn = &mut **tx;
                $body
            }
        }
    };
}
