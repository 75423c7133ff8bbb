//! The read models' loop lingers after a small batch, so that a stream of writes nobody waits
//! for is applied several at a time: a nudge (a create) waits the linger out, a poke (someone
//! waiting) ends it, in the instance that runs the loop as through a standby.

use std::time::Duration;

use sparc_projections::runner::ProjectionHandle;
use sparc_store::Database;
use sparc_store::testing::{postgres_database, sqlite_database};

use crate::leadership::{Instance, eventually, listed};

/// Longer than any test: only a poke ends it.
const FOREVER: Duration = Duration::from_secs(3600);

/// How long a write nudged during the linger is checked to stay unapplied.
const WHILE_LINGERING: Duration = Duration::from_millis(500);

/// Woken through `waker`, the loop applies a first write at a nudge (it is idle), then lingers:
/// a second write nudged stays unapplied until `waker` pokes.
async fn a_nudge_waits_out_the_linger_and_a_poke_ends_it(db: &Database, waker: &ProjectionHandle) {
    let first = crate::schedule_task(db).await;
    // Nudged again while not applied: on PostgreSQL the log may hide a write for a moment
    // (another transaction on the server), and an idle loop reads again only when woken.
    eventually("an idle loop applies a nudged write", async || {
        waker.nudge();
        listed(db, first).await
    })
    .await;

    let second = crate::schedule_task(db).await;
    waker.nudge();
    tokio::time::sleep(WHILE_LINGERING).await;
    assert!(
        !listed(db, second).await,
        "a nudge does not end the linger after a batch"
    );

    eventually("a poke ends the linger", async || {
        waker.poke();
        listed(db, second).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nudge_waits_out_the_read_models_linger_and_a_poke_ends_it_on_sqlite() {
    let (db, _file) = sqlite_database().await;
    let instance = Instance::start_lingering(&db, FOREVER);
    a_nudge_waits_out_the_linger_and_a_poke_ends_it(&db, &instance.handle).await;
    instance.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nudge_waits_out_the_read_models_linger_and_a_poke_ends_it_on_postgres() {
    let Some(db) = postgres_database().await else {
        return;
    };
    let instance = Instance::start_lingering(&db, FOREVER);
    eventually("the instance runs the read models", async || {
        instance.handle.runs_here("tasks")
    })
    .await;
    a_nudge_waits_out_the_linger_and_a_poke_ends_it(&db, &instance.handle).await;
    instance.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_s_nudge_waits_out_the_leader_s_linger_and_its_poke_ends_it() {
    let Some(db) = postgres_database().await else {
        return;
    };
    let leader = Instance::start_lingering(&db, FOREVER);
    eventually("the first instance runs the read models", async || {
        leader.handle.runs_here("tasks")
    })
    .await;
    let standby = Instance::start_lingering(&db, FOREVER);
    a_nudge_waits_out_the_linger_and_a_poke_ends_it(&db, &standby.handle).await;
    assert!(
        !standby.handle.runs_here("tasks"),
        "the standby woke the leader rather than running the loop"
    );
    standby.stop().await;
    leader.stop().await;
}
