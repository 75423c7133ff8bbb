//! What the log reader hands its consumers, on both backends.

use sparc_store::{Checkpoint, LogReader};

use crate::support::{append, both_backends, wait_until_readable};

#[tokio::test]
async fn a_reader_without_metadata_reads_the_same_events_with_null_metadata() {
    for (db, _file) in both_backends().await {
        append(&db, "counter-1", 1, 3).await;
        wait_until_readable(&db, 3).await;

        let full = LogReader::new(&db)
            .read_after(Checkpoint::ORIGIN, 10)
            .await
            .unwrap();
        let bare = LogReader::new(&db)
            .without_metadata()
            .read_after(Checkpoint::ORIGIN, 10)
            .await
            .unwrap();

        assert_eq!(full.len(), 3, "{}", db.backend());
        assert!(full.iter().all(|e| e.metadata["actor"] == "test"));
        assert!(
            bare.iter().all(|e| e.metadata.is_null()),
            "{}",
            db.backend()
        );
        let without_metadata = |events: &[sparc_store::RecordedEvent]| {
            events
                .iter()
                .map(|e| sparc_store::RecordedEvent {
                    metadata: serde_json::Value::Null,
                    ..e.clone()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(without_metadata(&full), bare, "{}", db.backend());
    }
}
