//! The error type of the store.

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is neither `postgres://`/`postgresql://` nor `sqlite:`.
    #[error("unsupported database URL (expected postgres://, postgresql:// or sqlite:): {0}")]
    UnsupportedUrl(String),
    /// A database operation failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying the embedded migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A file-system operation failed (creating the SQLite directory).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Event metadata is missing a field or has a malformed one.
    #[error("invalid event metadata: {0}")]
    Metadata(String),
    /// A stored timestamp is not RFC 3339.
    #[error("stored timestamp {0:?} is not RFC 3339")]
    Timestamp(String),
    /// The hash chain cannot be extended: the last chained event (at this global position) is
    /// missing or has lost its hash. `verify` reports the details.
    #[error("hash chain broken: the last chained event (position {0}) is missing or unhashed")]
    ChainBroken(i64),
}
