//! A PostgreSQL session advisory lock held on a connection of its own: how one of several
//! processes on a database is chosen to do a piece of work that needs doing once (the hash
//! chainer). Closing the connection, or losing it, releases the lock, so when its holder stops
//! or dies another process takes the work over at its next attempt.

use sqlx::{Connection as _, PgConnection, PgPool};

/// A held session lock.
#[derive(Debug)]
pub struct SessionLock {
    connection: PgConnection,
}

/// The connection a process that does not hold a lock asks on, kept between attempts rather
/// than opened for each.
pub type Asking = Option<PgConnection>;

impl SessionLock {
    /// Takes the lock named `key` if it is free; `None` if another session holds it. It asks on
    /// `asking`, or on a connection of `pool`'s server that leaves the pool if there is none:
    /// the connection becomes the lock's if the lock is taken, and stays in `asking` for the
    /// next attempt if not.
    pub async fn try_acquire(
        pool: &PgPool,
        key: &str,
        asking: &mut Asking,
    ) -> Result<Option<Self>, sqlx::Error> {
        let mut connection = match asking.take() {
            Some(open) => open,
            None => pool.acquire().await?.detach(),
        };
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(key)
                .fetch_one(&mut connection)
                .await?;
        if locked {
            Ok(Some(Self { connection }))
        } else {
            *asking = Some(connection);
            Ok(None)
        }
    }

    /// Whether the lock is still held: its connection still answers.
    pub async fn holds(&mut self) -> bool {
        self.connection.ping().await.is_ok()
    }

    /// Gives the lock up by closing its connection.
    pub async fn release(self) {
        let _ = self.connection.close().await;
    }
}
