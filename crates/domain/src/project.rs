//! The Project aggregate: a named group of an owner's tasks. It decides creation, updates
//! (name, description, archive and reactivate) and soft deletion; deleting a project's tasks is
//! a policy reacting to `ProjectDeleted`, not a decision of this aggregate.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::values::{ProjectName, Timestamp, text_enum};
use crate::{DomainError, ErrorKind};

/// Where a project is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ProjectStatus {
    /// In use.
    #[default]
    Active,
    /// Kept but set aside.
    Archived,
    /// Soft-deleted.
    Deleted,
}

text_enum!(ProjectStatus {
    Active => "active",
    Archived => "archived",
    Deleted => "deleted",
});

impl ProjectStatus {
    /// Whether an owner may set (or filter by) this status directly (deleted is reached only
    /// through deletion).
    pub fn is_settable(self) -> bool {
        self != ProjectStatus::Deleted
    }

    /// The statuses an owner may set, in declaration order.
    pub fn settable() -> impl Iterator<Item = ProjectStatus> {
        Self::ALL
            .iter()
            .copied()
            .filter(|status| status.is_settable())
    }
}

/// The fields a `PUT /projects/{id}` may change.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ProjectChanges {
    /// A new name.
    pub name: Option<ProjectName>,
    /// A new description (at most 2000 characters).
    pub description: Option<String>,
    /// Active or archived.
    pub status: Option<ProjectStatus>,
}

impl ProjectChanges {
    fn is_empty(&self) -> bool {
        self.name.is_none() && self.description.is_none() && self.status.is_none()
    }
}

/// What can be asked of a project.
#[derive(Debug, Clone, PartialEq)]
pub enum ProjectCommand {
    /// Create it.
    Create {
        /// Its id.
        project_id: Uuid,
        /// Its owner.
        user_id: Uuid,
        /// Its name.
        name: ProjectName,
        /// Its description.
        description: Option<String>,
        /// Decision time.
        at: Timestamp,
    },
    /// Change some fields.
    Update {
        /// The changes.
        changes: ProjectChanges,
        /// Decision time.
        at: Timestamp,
    },
    /// Soft delete.
    Delete {
        /// Decision time.
        at: Timestamp,
    },
}

impl ProjectCommand {
    /// The command's name (its variant), for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Create { .. } => "Create",
            Self::Update { .. } => "Update",
            Self::Delete { .. } => "Delete",
        }
    }
}

/// What happened to a project.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ProjectEvent {
    /// Created.
    ProjectCreated {
        /// Its id.
        project_id: Uuid,
        /// Its owner.
        user_id: Uuid,
        /// Its name.
        name: ProjectName,
        /// Its description.
        description: Option<String>,
        /// When.
        at: Timestamp,
    },
    /// Some fields changed (only the changed ones are present).
    ProjectUpdated {
        /// The changes.
        changes: ProjectChanges,
        /// When.
        at: Timestamp,
    },
    /// Soft-deleted.
    ProjectDeleted {
        /// When.
        at: Timestamp,
    },
}

impl DomainEvent for ProjectEvent {
    fn event_type(&self) -> String {
        match self {
            ProjectEvent::ProjectCreated { .. } => "ProjectCreated",
            ProjectEvent::ProjectUpdated { .. } => "ProjectUpdated",
            ProjectEvent::ProjectDeleted { .. } => "ProjectDeleted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Why a project command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProjectError {
    /// Create on an existing id.
    #[error("project already exists")]
    AlreadyExists,
    /// Unknown or deleted.
    #[error("Project not found")]
    NotFound,
    /// An update naming no field.
    #[error("No fields to update")]
    NoChanges,
    /// Status `deleted` through an update.
    #[error("status must be 'active' or 'archived'")]
    StatusNotSettable,
    /// A description over 2000 characters.
    #[error("description must be at most 2000 characters")]
    DescriptionTooLong,
}

impl DomainError for ProjectError {
    fn kind(&self) -> ErrorKind {
        match self {
            ProjectError::NotFound => ErrorKind::NotFound,
            ProjectError::AlreadyExists => ErrorKind::Conflict,
            ProjectError::NoChanges
            | ProjectError::StatusNotSettable
            | ProjectError::DescriptionTooLong => ErrorKind::Invalid,
        }
    }
}

/// The project's state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Project {
    /// Its id.
    pub id: Uuid,
    /// Whether it was created.
    pub exists: bool,
    /// Its owner.
    pub user_id: Uuid,
    /// Its name.
    pub name: Option<ProjectName>,
    /// Its description.
    pub description: Option<String>,
    /// Its status.
    pub status: ProjectStatus,
    /// Creation time.
    pub created_at: Option<Timestamp>,
    /// Last change.
    pub updated_at: Option<Timestamp>,
}

/// The longest description accepted.
pub const MAX_DESCRIPTION: usize = 2000;

impl Project {
    fn live(&self) -> Result<(), ProjectError> {
        if self.exists && self.status != ProjectStatus::Deleted {
            Ok(())
        } else {
            Err(ProjectError::NotFound)
        }
    }

    fn decide_update(
        &self,
        mut changes: ProjectChanges,
        at: Timestamp,
    ) -> Result<Vec<ProjectEvent>, ProjectError> {
        if changes.is_empty() {
            return Err(ProjectError::NoChanges);
        }
        self.live()?;
        if changes.status == Some(ProjectStatus::Deleted) {
            return Err(ProjectError::StatusNotSettable);
        }
        if changes
            .description
            .as_ref()
            .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION)
        {
            return Err(ProjectError::DescriptionTooLong);
        }
        if changes.name.as_ref() == self.name.as_ref() {
            changes.name = None;
        }
        if changes.description.is_some() && changes.description == self.description {
            changes.description = None;
        }
        if changes.status == Some(self.status) {
            changes.status = None;
        }
        Ok(if changes.is_empty() {
            vec![]
        } else {
            vec![ProjectEvent::ProjectUpdated { changes, at }]
        })
    }
}

impl Aggregate for Project {
    const TYPE: &'static str = "Project";
    type Command = ProjectCommand;
    type Event = ProjectEvent;
    type Error = ProjectError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let events = match command {
            ProjectCommand::Create {
                project_id,
                user_id,
                name,
                description,
                at,
            } => {
                if self.exists {
                    return Err(ProjectError::AlreadyExists);
                }
                if description
                    .as_ref()
                    .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION)
                {
                    return Err(ProjectError::DescriptionTooLong);
                }
                vec![ProjectEvent::ProjectCreated {
                    project_id,
                    user_id,
                    name,
                    description,
                    at,
                }]
            }
            ProjectCommand::Update { changes, at } => self.decide_update(changes, at)?,
            ProjectCommand::Delete { at } => {
                self.live()?;
                vec![ProjectEvent::ProjectDeleted { at }]
            }
        };
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ProjectEvent::ProjectCreated {
                project_id,
                user_id,
                name,
                description,
                at,
            } => {
                *self = Project {
                    id: project_id,
                    exists: true,
                    user_id,
                    name: Some(name),
                    description,
                    status: ProjectStatus::Active,
                    created_at: Some(at),
                    updated_at: Some(at),
                };
            }
            ProjectEvent::ProjectUpdated { changes, at } => {
                if let Some(name) = changes.name {
                    self.name = Some(name);
                }
                if let Some(description) = changes.description {
                    self.description = Some(description);
                }
                if let Some(status) = changes.status {
                    self.status = status;
                }
                self.updated_at = Some(at);
            }
            ProjectEvent::ProjectDeleted { at } => {
                self.status = ProjectStatus::Deleted;
                self.updated_at = Some(at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use cqrs_es::test::TestFramework;

    use super::*;

    fn t(m: u32) -> Timestamp {
        Utc.with_ymd_and_hms(2026, 3, 2, 9, m, 0).unwrap()
    }

    fn created() -> ProjectEvent {
        ProjectEvent::ProjectCreated {
            project_id: Uuid::from_u128(1),
            user_id: Uuid::from_u128(2),
            name: ProjectName::parse("Alpha").unwrap(),
            description: None,
            at: t(0),
        }
    }

    #[test]
    fn archiving_a_project_is_an_update_of_its_status() {
        let changes = ProjectChanges {
            status: Some(ProjectStatus::Archived),
            ..Default::default()
        };
        TestFramework::<Project>::with(())
            .given(vec![created()])
            .when(ProjectCommand::Update {
                changes: changes.clone(),
                at: t(1),
            })
            .then_expect_events(vec![ProjectEvent::ProjectUpdated { changes, at: t(1) }]);
    }

    #[test]
    fn updating_a_deleted_project_is_refused() {
        TestFramework::<Project>::with(())
            .given(vec![created(), ProjectEvent::ProjectDeleted { at: t(1) }])
            .when(ProjectCommand::Update {
                changes: ProjectChanges {
                    name: Some(ProjectName::parse("Beta").unwrap()),
                    ..Default::default()
                },
                at: t(2),
            })
            .then_expect_error(ProjectError::NotFound);
    }

    #[test]
    fn deleting_twice_is_refused_as_not_found() {
        TestFramework::<Project>::with(())
            .given(vec![created(), ProjectEvent::ProjectDeleted { at: t(1) }])
            .when(ProjectCommand::Delete { at: t(2) })
            .then_expect_error(ProjectError::NotFound);
    }

    #[test]
    fn an_empty_update_is_refused() {
        TestFramework::<Project>::with(())
            .given(vec![created()])
            .when(ProjectCommand::Update {
                changes: ProjectChanges::default(),
                at: t(2),
            })
            .then_expect_error(ProjectError::NoChanges);
    }

    #[test]
    fn status_deleted_cannot_be_set_by_update() {
        TestFramework::<Project>::with(())
            .given(vec![created()])
            .when(ProjectCommand::Update {
                changes: ProjectChanges {
                    status: Some(ProjectStatus::Deleted),
                    ..Default::default()
                },
                at: t(2),
            })
            .then_expect_error(ProjectError::StatusNotSettable);
    }

    #[test]
    fn a_description_over_2000_characters_is_refused() {
        TestFramework::<Project>::with(())
            .given_no_previous_events()
            .when(ProjectCommand::Create {
                project_id: Uuid::from_u128(1),
                user_id: Uuid::from_u128(2),
                name: ProjectName::parse("Alpha").unwrap(),
                description: Some("x".repeat(2001)),
                at: t(0),
            })
            .then_expect_error(ProjectError::DescriptionTooLong);
    }
}
