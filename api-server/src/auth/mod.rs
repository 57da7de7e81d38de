//! Authentication: password hashing, access tokens, and the extractors that give handlers
//! the caller's identity.

pub mod denylist;
pub mod extract;
pub mod password;
pub mod pg_feed;
pub mod refresh;
pub mod retention;
pub mod revocation;
pub mod tokens;

pub use extract::{AuthUser, MaybeAuthUser};
