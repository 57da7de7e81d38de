//! Argon2id password hashing on a bounded slice of the blocking thread pool.
//!
//! Each hash takes tens of milliseconds of CPU and `memory_kib` of RAM, so it never runs
//! on the async runtime, and a semaphore caps how many run at once (a burst of logins
//! queues instead of exhausting memory or starving other requests).

use std::sync::Arc;

use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use tokio::sync::Semaphore;

use crate::config::AuthConfig;

#[derive(Clone)]
pub struct PasswordHashing {
    params: Params,
    permits: Arc<Semaphore>,
    /// A real hash of a random password: verified against when the account does not exist,
    /// so a login for an unknown email costs the same time as a wrong password.
    dummy_hash: Arc<str>,
}

impl PasswordHashing {
    pub fn new(config: &AuthConfig) -> anyhow::Result<Self> {
        let params = Params::new(
            config.argon2_memory_kib,
            config.argon2_iterations,
            config.argon2_parallelism,
            None,
        )
        .map_err(|e| anyhow::anyhow!("invalid argon2 parameters: {e}"))?;
        let hasher = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let random: [u8; 16] = rand::random();
        let dummy_hash = hasher
            .hash_password(&random)
            .map_err(|e| anyhow::anyhow!("argon2 self-test failed: {e}"))?
            .to_string()
            .into();
        Ok(PasswordHashing {
            params,
            permits: Arc::new(Semaphore::new(config.hash_concurrency)),
            dummy_hash,
        })
    }

    fn hasher(params: Params) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
    }

    pub async fn hash(&self, password: String) -> anyhow::Result<String> {
        let _permit = self.permits.acquire().await?;
        let params = self.params.clone();
        tokio::task::spawn_blocking(move || {
            Self::hasher(params)
                .hash_password(password.as_bytes())
                .map(|hash| hash.to_string())
                .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))
        })
        .await?
    }

    /// Verifies against `hash`, or against a dummy hash when there is no account, so both
    /// paths take the same time. Returns true only for a real match.
    pub async fn verify(&self, password: String, hash: Option<String>) -> anyhow::Result<bool> {
        let _permit = self.permits.acquire().await?;
        let exists = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.to_string());
        let params = self.params.clone();
        let matched = tokio::task::spawn_blocking(move || {
            // Verification reads the parameters from the stored hash; `params` only
            // configures the hasher instance.
            Self::hasher(params)
                .verify_password(password.as_bytes(), hash.as_str())
                .is_ok()
        })
        .await?;
        Ok(exists && matched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Env};

    fn cheap() -> PasswordHashing {
        let mut config = Config::from_env(&Env::new(|_| None), true).unwrap().auth;
        config.argon2_memory_kib = 1024;
        config.argon2_iterations = 1;
        PasswordHashing::new(&config).unwrap()
    }

    #[tokio::test]
    async fn hashes_are_argon2id_and_verify() {
        let hashing = cheap();
        let hash = hashing.hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$"));
        assert!(
            hashing
                .verify("correct horse".into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(
            !hashing
                .verify("wrong horse".into(), Some(hash))
                .await
                .unwrap()
        );
        assert!(!hashing.verify("anything".into(), None).await.unwrap());
    }
}
