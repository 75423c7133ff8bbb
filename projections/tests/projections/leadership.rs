//! Several instances on one PostgreSQL database: each projection loop runs in one of them,
//! a write through a standby is applied at once by the instance that runs the loop, and when
//! that instance stops a standby takes the loop over.

use std::time::Duration;

use sparc_projections::ProjectionRunner;
use sparc_projections::catalog::READ_MODELS;
use sparc_projections::runner::ProjectionHandle;
use sparc_store::Database;
use sparc_store::testing::postgres_database;
use tokio::sync::watch;
use uuid::Uuid;

/// An instance's projections, polling so seldom that only pokes and wake-ups move them.
pub(crate) struct Instance {
    pub(crate) handle: ProjectionHandle,
    stop: watch::Sender<bool>,
    loops: Vec<tokio::task::JoinHandle<()>>,
}

impl Instance {
    fn start(db: &Database) -> Self {
        Self::start_lingering(db, Duration::from_millis(5))
    }

    /// An instance whose read models' loop lingers `linger` after each batch short of a poke.
    pub(crate) fn start_lingering(db: &Database, linger: Duration) -> Self {
        let read_models = READ_MODELS.iter().map(|model| model.live()).collect();
        let runner = ProjectionRunner::new(db.clone(), read_models, Vec::new())
            .with_poll_interval(Duration::from_secs(3600))
            .with_read_models_linger(linger);
        let handle = runner.handle();
        let (stop, stopped) = watch::channel(false);
        let loops = runner.spawn(stopped);
        Self {
            handle,
            stop,
            loops,
        }
    }

    pub(crate) async fn stop(self) {
        self.stop.send_replace(true);
        for task in self.loops {
            task.await.expect("a loop ends");
        }
    }
}

pub(crate) async fn eventually(what: &str, mut holds: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !holds().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn listed(db: &Database, id: Uuid) -> bool {
    sparc_projections::tasks::get(db, id)
        .await
        .expect("the read model should read")
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_runs_the_read_models_and_a_standby_takes_over_when_it_stops() {
    let Some(db) = postgres_database().await else {
        return;
    };
    let first = Instance::start(&db);
    eventually("the first instance runs the read models", async || {
        first.handle.runs_here("tasks")
    })
    .await;
    let second = Instance::start(&db);
    // A standby tries for the locks at once and then every second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !second.handle.runs_here("tasks"),
        "the read models run in one instance"
    );

    let mut applied_by_first = first.handle.applied("tasks").expect("tasks");
    applied_by_first.borrow_and_update();
    let through_standby = crate::schedule_task(&db).await;
    second.handle.poke();
    eventually("a write poked on the standby is applied", async || {
        listed(&db, through_standby).await
    })
    .await;
    assert!(
        applied_by_first.has_changed().expect("the first runs"),
        "the instance running the loop applied it"
    );

    first.stop().await;
    eventually("the standby takes the read models over", async || {
        second.handle.runs_here("tasks")
    })
    .await;
    let after_takeover = crate::schedule_task(&db).await;
    second.handle.poke();
    eventually("the new runner applies writes", async || {
        listed(&db, after_takeover).await
    })
    .await;
    second.stop().await;
}
