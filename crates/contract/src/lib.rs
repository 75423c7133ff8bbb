//! `sparc-contract`: the resources of the v1 contract as they appear on the wire, built from
//! the domain's aggregate states. The REST API returns them and the WebSocket gateway pushes
//! them in its change frames, so both speak exactly the same shapes; neither depends on the
//! other.
//!
//! - [`resources`]: `TaskResource`, `ProjectResource`, `ExecutionResource`, `AgentResource`,
//!   `UserResource` and `Message`.

pub mod resources;
