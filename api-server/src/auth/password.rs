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
    /// so a login for an unknown email costs the same time as a wrong password. Computed on
    /// first use, so an idle server never holds argon2's work area.
    dummy_hash: Arc<tokio::sync::OnceCell<String>>,
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
        Ok(PasswordHashing {
            params,
            permits: Arc::new(Semaphore::new(config.hash_concurrency)),
            dummy_hash: Arc::new(tokio::sync::OnceCell::new()),
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
        let hash = match hash {
            Some(hash) => hash,
            None => {
                let params = self.params.clone();
                self.dummy_hash
                    .get_or_try_init(|| async move {
                        tokio::task::spawn_blocking(move || {
                            let random: [u8; 16] = rand::random();
                            Self::hasher(params)
                                .hash_password(&random)
                                .map(|h| h.to_string())
                                .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))
                        })
                        .await?
                    })
                    .await?
                    .clone()
            }
        };
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
