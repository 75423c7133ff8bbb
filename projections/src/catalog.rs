//! The catalog of read models: each one's name (its table and checkpoint) and how to build its
//! live projection or a rebuild of it. The service, the command line and the admin endpoints
//! all take their list from here.

use std::sync::Arc;

use sparc_domain::agent::Agent;
use sparc_domain::execution::Execution;
use sparc_domain::memory::Memory;
use sparc_domain::project::Project;
use sparc_domain::task::Task;
use sparc_domain::user::User;

use crate::runner::Projection;
use crate::state_table::{Indexed, StateTable};

/// A read model that can run live and be rebuilt.
#[derive(Debug, Clone, Copy)]
pub struct ReadModel {
    /// Its table and checkpoint name.
    pub name: &'static str,
    /// Whether its changes are published to clients (through the outbox).
    pub published: bool,
    live: fn() -> Arc<dyn Projection>,
    shadow: fn(&str) -> Arc<dyn Projection>,
}

impl ReadModel {
    /// The projection that keeps the live table current.
    pub fn live(&self) -> Arc<dyn Projection> {
        (self.live)()
    }

    /// A projection that rebuilds the read model into the empty table `shadow`.
    pub fn shadow(&self, shadow: &str) -> Arc<dyn Projection> {
        (self.shadow)(shadow)
    }
}

fn live<A: Indexed + 'static>() -> Arc<dyn Projection> {
    Arc::new(StateTable::<A>::new())
}

fn shadow<A: Indexed + 'static>(table: &str) -> Arc<dyn Projection> {
    Arc::new(StateTable::<A>::rebuild_into(table))
}

const fn entry<A: Indexed + 'static>() -> ReadModel {
    ReadModel {
        name: A::TABLE,
        published: A::PUBLISHED,
        live: live::<A>,
        shadow: shadow::<A>,
    }
}

/// Every read model.
pub const READ_MODELS: &[ReadModel] = &[
    entry::<Task>(),
    entry::<Project>(),
    entry::<Execution>(),
    entry::<Agent>(),
    entry::<User>(),
    entry::<Memory>(),
];

/// The read model called `name`.
pub fn read_model(name: &str) -> Option<&'static ReadModel> {
    READ_MODELS.iter().find(|model| model.name == name)
}
