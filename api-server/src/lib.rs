//! `stoa-api`: the RealWorld API over PostgreSQL with a production surface.

pub mod admin_port;
pub mod app;
pub mod auth;
pub mod cache;
pub mod config;
pub mod database_roles;
pub mod db;
pub mod error;
pub mod error_tracking;
pub mod http;
pub mod jobs;
pub use stoa_contract::keys;
pub mod kv;
pub mod metrics;
pub mod oauth;
pub mod paging;
pub mod ratelimit;
pub mod reads;
pub mod schema;
pub mod search;
pub mod seed;
pub mod server_limits;
pub mod state;
pub mod subscription;
pub mod telemetry;
pub mod watch;
