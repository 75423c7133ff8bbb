//! Test support for every crate (feature `testing`): a fresh, migrated database per test on the
//! running PostgreSQL, or in a temporary SQLite file.
//!
//! ```no_run
//! # async fn t() {
//! let Some(db) = sparc_store::testing::postgres_database().await else { return };
//! let (sqlite, _file) = sparc_store::testing::sqlite_database().await;
//! # let _ = (db, sqlite); }
//! ```
//!
//! A service a test needs (PostgreSQL, NATS) that is not there fails the test
//! ([`service_missing`]), unless `SPARC_SKIP_SERVICES=1` says to skip the tests that need it:
//! then the Postgres helpers return `None` and the run says once, on the terminal, what it
//! skipped.
//!
//! Test databases are named `sparc_test_<unix seconds>_<uuid>`. A test process first drops the
//! ones older than [`TEST_DATABASE_KEPT`] (and any of the older unnamed-time form), so the
//! databases of earlier runs do not pile up on the shared server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::db::Database;

/// The admin URL used to create test databases unless `SPARC_TEST_POSTGRES_URL` is set.
pub const DEFAULT_POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A fresh Postgres test database.
#[derive(Debug)]
pub struct PostgresTestDatabase {
    /// The migrated database.
    pub database: Database,
    /// Its URL, for handing to a spawned `sparc` binary.
    pub url: String,
    /// Its name (`sparc_test_<unix seconds>_<uuid>`).
    pub name: String,
}

/// A fresh, migrated Postgres database named `sparc_test_<uuid>`, or `None` if PostgreSQL is not
/// running and `SPARC_SKIP_SERVICES=1` (else it panics: see [`service_missing`]).
pub async fn postgres_database() -> Option<Database> {
    postgres_test_database().await.map(|t| t.database)
}

/// Connections in the pool of a test's own [`Database`].
const TEST_POOL_SIZE: u32 = 8;

/// Like [`postgres_database`], with the database's URL and name.
pub async fn postgres_test_database() -> Option<PostgresTestDatabase> {
    let test = unmigrated_postgres_test_database().await?;
    test.database
        .migrate()
        .await
        .expect("migrate the test database");
    Some(test)
}

/// Like [`postgres_test_database`], with no migration applied (for tests of migrating).
pub async fn unmigrated_postgres_test_database() -> Option<PostgresTestDatabase> {
    let admin_url = std::env::var("SPARC_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| DEFAULT_POSTGRES_ADMIN_URL.to_string());
    let connect = tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(&admin_url));
    let mut admin = match connect.await {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => return unreachable_postgres(&error.to_string()),
        Err(_) => return unreachable_postgres("timed out"),
    };
    STALE_DATABASES_DROPPED
        .get_or_init(|| drop_stale_test_databases(&mut admin))
        .await;
    let name = format!(
        "{TEST_DATABASE_PREFIX}{}_{}",
        chrono::Utc::now().timestamp(),
        Uuid::new_v4().simple()
    );
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create the test database");
    let _ = admin.close().await;
    let url = with_database(&admin_url, &name);
    // A small pool: tests run in parallel, each beside a service with a pool of its own, and
    // the server's `max_connections` (100 by default) is shared by all of them.
    let pool = crate::db::postgres_pool_options(TEST_POOL_SIZE)
        .connect(&url)
        .await
        .expect("connect to the test database");
    Some(PostgresTestDatabase {
        database: Database::Postgres(pool),
        url,
        name,
    })
}

/// Test databases are named with this prefix.
const TEST_DATABASE_PREFIX: &str = "sparc_test_";

/// How long a test database is left alone: no test process runs longer.
pub const TEST_DATABASE_KEPT: Duration = Duration::from_secs(3600);

static STALE_DATABASES_DROPPED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// Drops the test databases created more than [`TEST_DATABASE_KEPT`] ago, and those named
/// without a creation time. Failures are only reported: cleaning up is not the test.
async fn drop_stale_test_databases(admin: &mut PgConnection) {
    let names: Vec<String> =
        match sqlx::query_scalar("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
            .bind(TEST_DATABASE_PREFIX)
            .fetch_all(&mut *admin)
            .await
        {
            Ok(names) => names,
            Err(error) => {
                eprintln!("could not list old test databases: {error}");
                return;
            }
        };
    let oldest_kept = chrono::Utc::now().timestamp() - TEST_DATABASE_KEPT.as_secs() as i64;
    for name in names {
        let created = name
            .strip_prefix(TEST_DATABASE_PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .and_then(|(seconds, _)| seconds.parse::<i64>().ok());
        if created.is_some_and(|created| created >= oldest_kept) {
            continue;
        }
        let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        if let Err(error) = sqlx::raw_sql(&drop).execute(&mut *admin).await {
            eprintln!("could not drop the old test database {name}: {error}");
        }
    }
}

fn unreachable_postgres<T>(why: &str) -> Option<T> {
    service_missing(&format!(
        "PostgreSQL (SPARC_TEST_POSTGRES_URL, default 127.0.0.1:5432: {why})"
    ));
    None
}

/// Says that `what`, a service a test needs, is missing: panics (the test fails) unless
/// `SPARC_SKIP_SERVICES=1`; then it tells the terminal once per service (past the test
/// harness's capture of a passing test's output), and the caller returns without testing.
pub fn service_missing(what: &str) {
    if std::env::var("SPARC_SKIP_SERVICES").as_deref() != Ok("1") {
        panic!(
            "{what} is missing: start it, or set SPARC_SKIP_SERVICES=1 to skip the tests that need it"
        );
    }
    static TOLD: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut told = TOLD.lock().unwrap_or_else(|e| e.into_inner());
    if !told.iter().any(|said| said == what) {
        told.push(what.to_owned());
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr().lock(),
            "SPARC_SKIP_SERVICES=1: skipping the tests that need {what}"
        );
    }
}

/// `url` with its database name replaced by `name` (query parameters kept).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let server = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{server}/{name}?{query}"),
        None => format!("{server}/{name}"),
    }
}

/// A SQLite database file in the system temporary directory, deleted (with its WAL files) on
/// drop.
#[derive(Debug)]
pub struct SqliteTestFile {
    path: PathBuf,
}

impl SqliteTestFile {
    /// A new, not yet existing, uniquely named file path.
    pub fn new() -> Self {
        let path =
            std::env::temp_dir().join(format!("sparc_test_{}.sqlite", Uuid::new_v4().simple()));
        Self { path }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `sqlite://` URL of the file, for [`Database::connect`] or a spawned binary.
    pub fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }
}

impl Default for SqliteTestFile {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for SqliteTestFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut file = self.path.clone().into_os_string();
            file.push(suffix);
            let _ = std::fs::remove_file(file);
        }
    }
}

/// A fresh, migrated SQLite database in a temporary file; keep the returned guard alive while
/// the database is used.
pub async fn sqlite_database() -> (Database, SqliteTestFile) {
    let file = SqliteTestFile::new();
    let database = Database::connect(&file.url())
        .await
        .expect("open the SQLite test database");
    database
        .migrate()
        .await
        .expect("migrate the SQLite test database");
    (database, file)
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_test_database_url_keeps_the_server_and_query() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/postgres?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
    }
}
