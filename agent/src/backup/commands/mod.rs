//! The commands: functions over a [`Repository`](crate::Repository) and an
//! `*Options` struct (serde, so the daemon's YAML jobs and the CLI share them).

pub mod backup;
pub mod check;
pub mod diff;
pub mod forget;
pub mod ls;
pub mod prune;
pub mod recover;
pub mod repair;
pub mod restore;
pub mod rotate;
