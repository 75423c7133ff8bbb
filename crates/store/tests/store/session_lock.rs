//! A session lock on PostgreSQL: one holder at a time, and the next takes it once the holder
//! releases it or its connection is gone.

use sparc_store::Database;
use sparc_store::session_lock::SessionLock;
use sparc_store::testing::postgres_database;

#[tokio::test]
async fn one_session_holds_the_lock_and_another_takes_it_when_it_is_released() {
    let Some(Database::Postgres(pool)) = postgres_database().await else {
        return;
    };
    let key = format!("sparc.test.{}", uuid::Uuid::new_v4());
    let mut first = SessionLock::try_acquire(&pool, &key, &mut None)
        .await
        .expect("asked")
        .expect("a free lock is taken");
    assert!(first.holds().await);
    assert!(
        SessionLock::try_acquire(&pool, &key, &mut None)
            .await
            .expect("asked")
            .is_none(),
        "a held lock is not taken twice"
    );
    first.release().await;
    let second = SessionLock::try_acquire(&pool, &key, &mut None)
        .await
        .expect("asked")
        .expect("a released lock is taken");

    // A holder whose connection is gone holds nothing.
    let (pid,): (i32,) = sqlx::query_as(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' \
         AND objid = (hashtextextended($1, 0) & 4294967295)::bigint::oid",
    )
    .bind(&key)
    .fetch_one(&pool)
    .await
    .expect("the lock's holder");
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(&pool)
        .await
        .expect("its connection ends");
    let mut second = second;
    assert!(!second.holds().await, "the lock went with its connection");
    let third = SessionLock::try_acquire(&pool, &key, &mut None)
        .await
        .expect("asked");
    assert!(third.is_some(), "and is free for the next");
}
