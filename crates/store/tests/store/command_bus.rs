//! The command bus on both backends: creating a stream without reading it first, and what
//! happens when the id of a "new" stream is taken after all.

use chrono::Utc;
use cqrs_es::persist::PersistedEventRepository;
use sparc_domain::project::{Project, ProjectCommand, ProjectError};
use sparc_domain::values::ProjectName;
use sparc_store::{CommandBus, CommandError, EventMetadata, EventRepository};
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
