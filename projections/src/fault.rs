//! Which failures of a consumer are the event's fault and which are the moment's. A
//! deterministic failure (the payload does not decode, the database refuses the data: an
//! encoding, range or constraint error) fails the same way at every retry, so the event is
//! parked for that consumer; anything else (a lost connection, a serialization failure, a busy
//! database, a timeout, an error we cannot place) is retried with back-off and never parks.

use sparc_store::StoreError;

use crate::runner::ProjectionError;

/// How a failure is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Applying the same events again fails again: find the event and park it.
    Deterministic,
    /// Try again later.
    Transient,
}

impl ProjectionError {
    /// Whether this failure is the events' fault or the moment's.
    pub fn fault(&self) -> Fault {
        match self {
            Self::Payload { .. } => Fault::Deterministic,
            Self::Database(error) => sqlx_fault(error),
            Self::Store(error) => store_fault(error),
            Self::NotReady(_) | Self::Command(_) => Fault::Transient,
        }
    }
}

fn store_fault(error: &StoreError) -> Fault {
    match error {
        StoreError::Database(error) => sqlx_fault(error),
        StoreError::Metadata(_) | StoreError::Timestamp(_) => Fault::Deterministic,
        _ => Fault::Transient,
    }
}

/// SQLSTATE classes of data the database refuses whatever the moment: 22 (data exception:
/// a NUL in text, a number out of range, a string too long), 23 (integrity constraint); and
/// 54 (a program limit exceeded, such as a value too large to index). Unique violations (23505)
/// can hide a race elsewhere, but the read models upsert, so for them it is the data too.
fn postgres_deterministic(code: &str) -> bool {
    code.starts_with("22") || code.starts_with("23") || code.starts_with("54")
}

/// SQLite primary result codes of refused data: TOOBIG (18), CONSTRAINT (19), MISMATCH (20),
/// RANGE (25).
fn sqlite_deterministic(code: i64) -> bool {
    matches!(code & 0xff, 18 | 19 | 20 | 25)
}

fn sqlx_fault(error: &sqlx::Error) -> Fault {
    let deterministic = match error {
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or_default();
            if db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some()
            {
                postgres_deterministic(code)
            } else {
                code.parse().is_ok_and(sqlite_deterministic)
            }
        }
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::Encode(_) => true,
        _ => false,
    };
    if deterministic {
        Fault::Deterministic
    } else {
        Fault::Transient
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_data_is_deterministic_and_the_moment_is_transient() {
        for code in [
            "22021", "22P05", "22001", "22003", "23502", "23514", "54000",
        ] {
            assert!(postgres_deterministic(code), "{code}");
        }
        for code in [
            "08006", "40001", "40P01", "53300", "57P01", "55P03", "25P02",
        ] {
            assert!(!postgres_deterministic(code), "{code}");
        }
        // SQLITE_CONSTRAINT_UNIQUE (2067), SQLITE_TOOBIG, SQLITE_MISMATCH.
        for code in [2067, 18, 20] {
            assert!(sqlite_deterministic(code), "{code}");
        }
        // SQLITE_BUSY, SQLITE_LOCKED, SQLITE_BUSY_SNAPSHOT (517).
        for code in [5, 6, 517] {
            assert!(!sqlite_deterministic(code), "{code}");
        }
    }

    #[test]
    fn an_unreadable_payload_is_deterministic_and_a_lost_connection_transient() {
        let payload = ProjectionError::Payload {
            position: 1,
            event_type: "TaskScheduled".into(),
            source: serde_json::from_str::<u8>("x").unwrap_err(),
        };
        assert_eq!(payload.fault(), Fault::Deterministic);
        let io = ProjectionError::Database(sqlx::Error::Io(std::io::Error::other("reset")));
        assert_eq!(io.fault(), Fault::Transient);
        assert_eq!(
            ProjectionError::Database(sqlx::Error::PoolTimedOut).fault(),
            Fault::Transient
        );
        assert_eq!(
            ProjectionError::Command("conflict".into()).fault(),
            Fault::Transient
        );
    }
}
