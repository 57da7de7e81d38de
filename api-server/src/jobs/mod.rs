//! Background jobs: a queue in PostgreSQL (`jobs` table) that `stoa-api worker` drains,
//! and the schedules that enqueue maintenance.
//!
//! Delivery is at least once, effect exactly once: a job's handler runs inside the
//! transaction that marks the job done, so its writes and its completion commit together.
//! A worker killed mid-job leaves nothing behind (PostgreSQL rolls the transaction back)
//! but the claimed row, which another worker takes again once the lease is over.

pub mod kinds;
pub mod queue;
pub mod schedule;
pub mod worker;

pub use kinds::Kind;
