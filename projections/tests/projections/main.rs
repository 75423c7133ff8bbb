//! Integration tests of the projections against real databases, one module per area, in one
//! binary (one link).

mod fault_isolation;
mod leadership;
mod outbox;
mod upcasting;
