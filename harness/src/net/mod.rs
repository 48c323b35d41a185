//! The lab's private network: an L2 hub the harness runs itself (no root, no bridges, nothing
//! host-global). Host port forwards belong to each machine (crate::vm).
pub mod hub;

pub use hub::{Hub, HubError};
