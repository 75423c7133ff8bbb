//! The group commit's workers: they run on the runtime the group commit was made in.

use std::collections::HashMap;

use cqrs_es::persist::SerializedEvent;
use sparc_store::group_commit::GroupCommit;
use sparc_store::testing;
use tokio::runtime::{Builder, Runtime};

fn event(id: &str, sequence: usize) -> SerializedEvent {
    SerializedEvent::new(
        id.to_string(),
        sequence,
        "Counter".to_string(),
        "Added".to_string(),
        "1.0".to_string(),
        serde_json::json!({ "Added": { "amount": 1 } }),
        serde_json::to_value(HashMap::from([("actor", "test")])).unwrap(),
    )
}

fn runtime(threads: usize) -> Runtime {
    Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap()
}

/// The service makes a command bus per runtime; were the workers started on the runtime of the
/// first append, a bus first used from a runtime that stops sooner would stop appending.
#[test]
fn appends_go_on_after_the_runtime_of_the_first_append_has_stopped() {
    let home = runtime(1);
    let Some(db) = home.block_on(testing::postgres_database()) else {
        return;
    };
    let group_commit = home.block_on(async { GroupCommit::of(&db).expect("Postgres") });

    let elsewhere = runtime(1);
    elsewhere
        .block_on(group_commit.append("Counter", &event("c-1", 1)))
        .expect("the first append, from another runtime");
    drop(elsewhere);

    home.block_on(group_commit.append("Counter", &event("c-1", 2)))
        .expect("an append after that runtime stopped");
}
