//! Authentication: password hashing, access tokens, and the extractors that give handlers
//! the caller's identity.

pub mod accounts;
pub mod audit;
pub mod denylist;
pub mod extract;
pub mod password;
pub mod refresh;
pub mod retention;
pub mod revocation;
pub mod revocations_listen;
pub mod role;
pub mod sealing;
pub mod security_log;
pub mod tokens;
pub mod totp;

pub use extract::{AdminUser, AuthUser, MaybeAuthUser};
pub use role::Role;
