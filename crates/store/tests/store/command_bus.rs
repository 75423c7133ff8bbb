//! The command bus on both backends: creating a stream without reading it first, what
//! happens when the id of a "new" stream is taken after all, and how the commands queued on
//! one stream are decided in turn and committed together.

use chrono::Utc;
use cqrs_es::persist::PersistedEventRepository;
use std::sync::Arc;
use std::time::Duration;

use sparc_domain::project::{Project, ProjectChanges, ProjectCommand, ProjectError};
use sparc_domain::values::ProjectName;
use sparc_store::{CommandBus, CommandError, Database, EventMetadata, EventRepository};
use uuid::Uuid;

use crate::support::both_backends;

fn create(project_id: Uuid, name: &str) -> ProjectCommand {
    ProjectCommand::Create {
        project_id,
        user_id: Uuid::from_u128(7),
        name: ProjectName::parse(name).unwrap(),
        description: None,
        at: Utc::now(),
    }
}

fn name(project: &Project) -> Option<&str> {
    project.name.as_ref().map(ProjectName::as_str)
}

#[tokio::test]
async fn create_commits_the_first_event_of_a_new_stream_with_its_metadata() {
    for (db, _file) in both_backends().await {
        let bus = CommandBus::new(&db);
        let id = Uuid::now_v7();
        let metadata = EventMetadata::new("user-7", "request-1");

        let outcome = bus
            .create::<Project>(&id.to_string(), create(id, "Alpha"), &metadata)
            .await
            .unwrap();

        assert_eq!(outcome.version, 1, "{}", db.backend());
        assert_eq!(outcome.events.len(), 1);
        assert_eq!(name(&outcome.state), Some("Alpha"));
        let stored = EventRepository::new(&db)
            .get_events::<Project>(&id.to_string())
            .await
            .unwrap();
        assert_eq!(stored.len(), 1, "{}", db.backend());
        assert_eq!(stored[0].sequence, 1);
        assert_eq!(stored[0].event_type, "ProjectCreated");
        assert_eq!(stored[0].metadata["actor"], "user-7");
        assert_eq!(stored[0].metadata["request_id"], "request-1");
        let (loaded, version) = bus.load::<Project>(&id.to_string()).await.unwrap();
        assert_eq!((name(&loaded), version), (Some("Alpha"), 1));
    }
}

#[tokio::test]
async fn create_on_a_taken_id_is_decided_on_the_stored_stream_and_writes_nothing() {
    for (db, _file) in both_backends().await {
        let bus = CommandBus::new(&db);
        let id = Uuid::now_v7();
        let metadata = EventMetadata::new("user-7", "request-1");
        bus.create::<Project>(&id.to_string(), create(id, "Alpha"), &metadata)
            .await
            .unwrap();

        let again = bus
            .create::<Project>(&id.to_string(), create(id, "Beta"), &metadata)
            .await;

        assert!(
            matches!(
                again,
                Err(CommandError::Rejected(ProjectError::AlreadyExists))
            ),
            "{}: {again:?}",
            db.backend()
        );
        let stored = EventRepository::new(&db)
            .get_events::<Project>(&id.to_string())
            .await
            .unwrap();
        assert_eq!(stored.len(), 1, "{}", db.backend());
        let (loaded, _) = bus.load::<Project>(&id.to_string()).await.unwrap();
        assert_eq!(name(&loaded), Some("Alpha"));
    }
}

fn describe(description: Option<String>) -> ProjectCommand {
    ProjectCommand::Update {
        changes: ProjectChanges {
            name: None,
            description,
            status: None,
        },
        at: Utc::now(),
    }
}

/// Holds the event log's write lock for `hold` from a connection of its own: appends wait.
async fn hold_the_log(db: &Database, hold: Duration) -> tokio::task::JoinHandle<()> {
    match db {
        Database::Postgres(pool) => {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("LOCK TABLE events IN EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await
                .unwrap();
            tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                tx.commit().await.unwrap();
            })
        }
        Database::Sqlite(pool) => {
            let tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
            tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                tx.commit().await.unwrap();
            })
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_queued_on_one_stream_are_decided_in_turn_and_committed_together() {
    for (db, _file) in both_backends().await {
        let bus = Arc::new(CommandBus::new(&db));
        let id = Uuid::now_v7();
        let stream = id.to_string();
        let metadata = EventMetadata::new("user-7", "create");
        bus.create::<Project>(&stream, create(id, "Alpha"), &metadata)
            .await
            .unwrap();

        // The first change holds the stream's worker in its commit while the others queue.
        let held = hold_the_log(&db, Duration::from_millis(500)).await;
        let send = |command: ProjectCommand, request: String, expected: Option<usize>| {
            let (bus, stream) = (bus.clone(), stream.clone());
            tokio::spawn(async move {
                let metadata = EventMetadata::new("user-7", request);
                bus.execute::<Project>(&stream, command, &metadata, expected)
                    .await
            })
        };
        let first = send(describe(Some("first".into())), "first".into(), None);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let queued: Vec<_> = (0..20)
            .map(|n| send(describe(Some(format!("d{n}"))), format!("r{n}"), None))
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = send(describe(None), "empty".into(), None);
        let stale = send(describe(Some("stale".into())), "stale".into(), Some(2));
        held.await.unwrap();

        let backend = db.backend();
        assert_eq!(first.await.unwrap().unwrap().version, 2, "{backend}");
        let mut versions = Vec::new();
        for (n, change) in queued.into_iter().enumerate() {
            let done = change.await.unwrap().unwrap();
            assert_eq!(done.events.len(), 1, "{backend}");
            let described = done.state.description.as_deref();
            assert_eq!(described, Some(format!("d{n}").as_str()), "{backend}");
            versions.push(done.version);
        }
        versions.sort_unstable();
        assert_eq!(
            versions,
            (3..=22).collect::<Vec<_>>(),
            "{backend}: no race lost"
        );
        assert!(
            matches!(
                refused.await.unwrap(),
                Err(CommandError::Rejected(ProjectError::NoChanges))
            ),
            "{backend}: a refusal in the batch is its own"
        );
        assert!(
            matches!(
                stale.await.unwrap(),
                Err(CommandError::VersionMismatch { expected: 2, .. })
            ),
            "{backend}: If-Match is checked against the state the batch reached"
        );

        let stored = EventRepository::new(&db)
            .get_events::<Project>(&stream)
            .await
            .unwrap();
        assert_eq!(stored.len(), 22, "{backend}: the refused commit nothing");
        for event in &stored[2..] {
            let request = event.metadata["request_id"].as_str().unwrap();
            let n: usize = request[1..].parse().unwrap();
            assert_eq!(
                event.payload["ProjectUpdated"]["changes"]["description"],
                format!("d{n}"),
                "{backend}: each event carries its own command's metadata"
            );
        }
        if let Database::Postgres(pool) = &db {
            let transactions: i64 = sqlx::query_scalar(
                "SELECT count(DISTINCT transaction_id) FROM events \
                 WHERE aggregate_id = $1 AND sequence > 2",
            )
            .bind(&stream)
            .fetch_one(pool)
            .await
            .unwrap();
            assert_eq!(transactions, 1, "the queued commands commit together");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_buses_on_one_stream_settle_their_races_and_lose_no_command() {
    for (db, _file) in both_backends().await {
        let buses = [
            Arc::new(CommandBus::new(&db)),
            Arc::new(CommandBus::new(&db)),
        ];
        let id = Uuid::now_v7();
        let stream = id.to_string();
        let metadata = EventMetadata::new("user-7", "create");
        buses[0]
            .create::<Project>(&stream, create(id, "Alpha"), &metadata)
            .await
            .unwrap();
        let changes: Vec<_> = (0..40)
            .map(|n| {
                let (bus, stream) = (buses[n % 2].clone(), stream.clone());
                tokio::spawn(async move {
                    let metadata = EventMetadata::new("user-7", format!("r{n}"));
                    let command = describe(Some(format!("d{n}")));
                    bus.execute::<Project>(&stream, command, &metadata, None)
                        .await
                        .map(|done| done.version)
                })
            })
            .collect();
        let mut versions = Vec::new();
        for change in changes {
            versions.push(change.await.unwrap().unwrap());
        }
        versions.sort_unstable();
        assert_eq!(versions, (2..=41).collect::<Vec<_>>(), "{}", db.backend());
    }
}

#[tokio::test]
async fn a_bus_sees_what_another_committed_since_its_last_command_on_a_stream() {
    for (db, _file) in both_backends().await {
        let (ours, theirs) = (CommandBus::new(&db), CommandBus::new(&db));
        let id = Uuid::now_v7();
        let stream = id.to_string();
        let metadata = EventMetadata::new("user-7", "request");
        ours.create::<Project>(&stream, create(id, "Alpha"), &metadata)
            .await
            .unwrap();
        let change = |description: &str| describe(Some(description.to_owned()));
        ours.execute::<Project>(&stream, change("ours"), &metadata, None)
            .await
            .unwrap();
        for description in ["theirs", "theirs again"] {
            theirs
                .execute::<Project>(&stream, change(description), &metadata, None)
                .await
                .unwrap();
        }

        let rename = ProjectCommand::Update {
            changes: ProjectChanges {
                name: Some(ProjectName::parse("Beta").unwrap()),
                description: None,
                status: None,
            },
            at: Utc::now(),
        };
        let done = ours
            .execute::<Project>(&stream, rename, &metadata, Some(4))
            .await
            .unwrap();

        let backend = db.backend();
        assert_eq!(done.version, 5, "{backend}");
        assert_eq!(name(&done.state), Some("Beta"), "{backend}");
        assert_eq!(
            done.state.description.as_deref(),
            Some("theirs again"),
            "{backend}: decided on the stream as it is, not as this bus last left it"
        );
    }
}
