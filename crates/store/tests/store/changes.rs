//! Read-model change notices: a committed `notify_changed` reaches a follower on another
//! connection and moves exactly the named read model's generation; a rolled-back one does not;
//! SQLite has no generations (nothing may be cached there).

use std::time::Duration;

use sparc_store::changes::follow;
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
async fn sqlite_has_no_generations_so_nothing_is_cached() {
    let (db, _file) = testing::sqlite_database().await;
    let generations = Generations::default();
    let (_stop, stopped) = watch::channel(false);
    follow(db.clone(), generations.clone(), stopped).await;
    notify(&db, &["tasks"], true).await;
    generations.bump("tasks");
    assert_eq!(generations.current("tasks"), None);
}
