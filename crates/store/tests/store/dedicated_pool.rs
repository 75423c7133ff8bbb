//! A dedicated pool on PostgreSQL: its connections carry the name they were given and plan as
//! asked, and the pool it came from keeps its own settings.

use sparc_store::testing::postgres_database;
use sparc_store::{Database, Planning};
use sqlx::PgPool;

/// `plan_cache_mode` and `application_name` of a connection of `pool`.
async fn settings_of(pool: &PgPool) -> (String, String) {
    sqlx::query_as("SELECT current_setting('plan_cache_mode'), current_setting('application_name')")
        .fetch_one(pool)
        .await
        .expect("the connection's settings")
}

#[tokio::test]
async fn a_dedicated_pool_names_its_connections_and_plans_as_asked() {
    let Some(db) = postgres_database().await else {
        return;
    };
    let Database::Postgres(once) = db.dedicated("sparc test loops", 1, Planning::Once) else {
        panic!("a dedicated pool of PostgreSQL is a PostgreSQL pool");
    };
    assert_eq!(
        settings_of(&once).await,
        (
            "force_generic_plan".to_owned(),
            "sparc test loops".to_owned()
        )
    );
    let Database::Postgres(auto) = db.dedicated("sparc test background", 1, Planning::Auto) else {
        panic!("a dedicated pool of PostgreSQL is a PostgreSQL pool");
    };
    assert_eq!(
        settings_of(&auto).await,
        ("auto".to_owned(), "sparc test background".to_owned())
    );
    let Database::Postgres(source) = &db else {
        unreachable!("matched above");
    };
    let (plan_cache_mode, _) = settings_of(source).await;
    assert_eq!(plan_cache_mode, "auto", "the source pool plans as before");
}
