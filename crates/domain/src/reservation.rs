//! The Reservation aggregate: a unique name (a username, an e-mail, an agent name) claimed by
//! one owner. Its id is `<kind>:<normalized value>`, so two concurrent claims of one name write
//! to the same stream and the store's optimistic concurrency lets exactly one win.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::values::Timestamp;
use crate::{DomainError, ErrorKind};

/// The stream id of a reservation: kind plus the lower-cased value.
pub fn reservation_id(kind: &str, value: &str) -> String {
    format!("{kind}:{}", value.to_lowercase())
}

/// What can be asked of a reservation.
#[derive(Debug, Clone, PartialEq)]
pub enum ReservationCommand {
    /// Claim the name for `owner`; claiming one's own name again is a no-op.
    Claim {
        /// The claimant.
        owner: Uuid,
        /// Decision time.
        at: Timestamp,
    },
    /// Give the name up; only its owner can.
    Release {
        /// The owner.
        owner: Uuid,
        /// Decision time.
        at: Timestamp,
    },
}

impl ReservationCommand {
    /// The command's name (its variant), for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Claim { .. } => "Claim",
            Self::Release { .. } => "Release",
        }
    }
}

/// What happened to a reservation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ReservationEvent {
    /// Claimed.
    NameClaimed {
        /// The owner.
        owner: Uuid,
        /// When.
        at: Timestamp,
    },
    /// Released.
    NameReleased {
        /// The former owner.
        owner: Uuid,
        /// When.
        at: Timestamp,
    },
}

impl DomainEvent for ReservationEvent {
    fn event_type(&self) -> String {
        match self {
            ReservationEvent::NameClaimed { .. } => "NameClaimed",
            ReservationEvent::NameReleased { .. } => "NameReleased",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Why a reservation command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReservationError {
    /// Someone else holds the name.
    #[error("name is already taken")]
    Taken,
}

impl DomainError for ReservationError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Conflict
    }
}

/// Who holds the name.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Reservation {
    /// The holder, if any.
    pub owner: Option<Uuid>,
}

impl Aggregate for Reservation {
    const TYPE: &'static str = "Reservation";
    type Command = ReservationCommand;
    type Event = ReservationEvent;
    type Error = ReservationError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            ReservationCommand::Claim { owner, at } => match self.owner {
                Some(holder) if holder == owner => {}
                Some(_) => return Err(ReservationError::Taken),
                None => {
                    sink.write(ReservationEvent::NameClaimed { owner, at }, self)
                        .await
                }
            },
            ReservationCommand::Release { owner, at } => {
                if self.owner == Some(owner) {
                    sink.write(ReservationEvent::NameReleased { owner, at }, self)
                        .await;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ReservationEvent::NameClaimed { owner, .. } => self.owner = Some(owner),
            ReservationEvent::NameReleased { .. } => self.owner = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use cqrs_es::test::TestFramework;

    use super::*;

    fn t() -> Timestamp {
        Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap()
    }

    #[test]
    fn a_name_held_by_someone_else_cannot_be_claimed() {
        TestFramework::<Reservation>::with(())
            .given(vec![ReservationEvent::NameClaimed {
                owner: Uuid::from_u128(1),
                at: t(),
            }])
            .when(ReservationCommand::Claim {
                owner: Uuid::from_u128(2),
                at: t(),
            })
            .then_expect_error(ReservationError::Taken);
    }

    #[test]
    fn a_released_name_can_be_claimed_again() {
        TestFramework::<Reservation>::with(())
            .given(vec![
                ReservationEvent::NameClaimed {
                    owner: Uuid::from_u128(1),
                    at: t(),
                },
                ReservationEvent::NameReleased {
                    owner: Uuid::from_u128(1),
                    at: t(),
                },
            ])
            .when(ReservationCommand::Claim {
                owner: Uuid::from_u128(2),
                at: t(),
            })
            .then_expect_events(vec![ReservationEvent::NameClaimed {
                owner: Uuid::from_u128(2),
                at: t(),
            }]);
    }

    #[test]
    fn reservation_ids_ignore_case() {
        assert_eq!(
            reservation_id("username", "Alice"),
            reservation_id("username", "alice")
        );
    }
}
