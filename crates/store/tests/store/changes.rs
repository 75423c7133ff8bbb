//! Read-model change notices: a committed `notify_changed` reaches a follower on another
//! connection and moves exactly the named view's generation (an owner's scope moves that owner's
//! and the all-seeing view, no other owner's); a rolled-back one does not; on SQLite a change
//! another process counts reaches the serving process's follower.

use std::time::Duration;

use sparc_store::changes::{follow, scope};
use sparc_store::testing;
use sparc_store::{Database, Generations};
use tokio::sync::watch;

/// Polls `condition` every 10 ms for up to 5 s.
async fn eventually(condition: impl Fn() -> bool) -> bool {
    for _ in 0..500 {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

async fn notify(db: &Database, read_models: &[&str], commit: bool) {
    let mut tx = db.begin().await.unwrap();
    tx.notify_changed(read_models).await.unwrap();
    if commit {
        tx.commit().await.unwrap();
    } else {
        tx.rollback().await.unwrap();
    }
}

#[tokio::test]
async fn a_committed_change_notice_moves_only_that_read_models_generation() {
    let Some(db) = testing::postgres_database().await else {
        return;
    };
    let generations = Generations::default();
    let (stop, stopped) = watch::channel(false);
    let follower = tokio::spawn(follow(db.clone(), generations.clone(), stopped));
    assert!(
        eventually(|| generations.current("tasks").is_some()).await,
        "the follower should start listening"
    );
    let tasks = generations.current("tasks");
    let agents = generations.current("agents");

    notify(&db, &["tasks"], false).await;
    notify(&db, &["tasks"], true).await;
    assert!(
        eventually(|| generations.current("tasks") != tasks).await,
        "a committed notice should move the tasks generation"
    );
    assert_eq!(generations.current("agents"), agents);

    stop.send(true).unwrap();
    follower.await.unwrap();
    assert_eq!(
        generations.current("tasks"),
        None,
        "a stopped follower leaves no generation to cache by"
    );
}

#[tokio::test]
async fn a_rolled_back_change_notice_is_never_delivered() {
    let Some(db) = testing::postgres_database().await else {
        return;
    };
    let generations = Generations::default();
    let (stop, stopped) = watch::channel(false);
    let follower = tokio::spawn(follow(db.clone(), generations.clone(), stopped));
    assert!(eventually(|| generations.current("tasks").is_some()).await);
    let before = generations.current("tasks");

    notify(&db, &["tasks"], false).await;
    // A committed notice on another read model, sent after the rolled-back one, arrives after
    // it would have: once it is in, the rolled-back one is known not to be coming.
    let projects = generations.current("projects");
    notify(&db, &["projects"], true).await;
    assert!(eventually(|| generations.current("projects") != projects).await);
    assert_eq!(generations.current("tasks"), before);

    stop.send(true).unwrap();
    follower.await.unwrap();
}

#[tokio::test]
async fn an_owner_s_change_moves_that_owner_s_view_and_the_all_seeing_one_only() {
    let Some(db) = testing::postgres_database().await else {
        return;
    };
    let generations = Generations::default();
    let (stop, stopped) = watch::channel(false);
    let follower = tokio::spawn(follow(db.clone(), generations.clone(), stopped));
    assert!(eventually(|| generations.current("tasks").is_some()).await);
    let (ada, bob) = (scope("tasks", "ada"), scope("tasks", "bob"));
    let before = |name: &str| generations.current(name);
    let (all, of_ada, of_bob) = (before("tasks"), before(&ada), before(&bob));

    notify(&db, &[bob.as_str()], true).await;
    assert!(
        eventually(|| generations.current(&bob) != of_bob).await,
        "bob's view moves"
    );
    assert_ne!(
        generations.current("tasks"),
        all,
        "the all-seeing view moves"
    );
    assert_eq!(generations.current(&ada), of_ada, "ada's view stands");

    let of_ada = generations.current(&ada);
    notify(&db, &["tasks"], true).await;
    assert!(
        eventually(|| generations.current(&ada) != of_ada).await,
        "a change of the whole read model moves every owner's view"
    );

    stop.send(true).unwrap();
    follower.await.unwrap();
}

#[tokio::test]
async fn on_sqlite_a_change_another_process_counts_moves_every_view_and_local_bumps_are_scoped() {
    let (db, file) = testing::sqlite_database().await;
    let generations = Generations::default();
    let (stop, stopped) = watch::channel(false);
    let follower = tokio::spawn(follow(db.clone(), generations.clone(), stopped));
    assert!(
        eventually(|| generations.current("tasks").is_some()).await,
        "the serving process caches on SQLite too"
    );
    let (ada, bob) = (scope("tasks", "ada"), scope("tasks", "bob"));
    let of_ada = generations.current(&ada);
    generations.bump(&bob);
    assert_eq!(
        generations.current(&ada),
        of_ada,
        "a local bump of bob leaves ada"
    );

    // Another process: its own connections to the same file.
    let other = Database::connect(&file.url()).await.unwrap();
    let agents = generations.current("agents");
    notify(&other, &["tasks"], true).await;
    assert!(
        eventually(|| generations.current(&ada) != of_ada).await,
        "a change counted by another process moves every view"
    );
    assert_ne!(generations.current("agents"), agents);

    stop.send(true).unwrap();
    follower.await.unwrap();
    assert_eq!(generations.current("tasks"), None);
}
