//! Argon2id password hashing on a bounded slice of the blocking thread pool.
//!
//! Each hash takes tens of milliseconds of CPU and `memory_kib` of RAM, so it never runs
//! on the async runtime, and a semaphore caps how many run at once (a burst of logins
//! queues instead of exhausting memory or starving other requests).

use std::sync::{Arc, OnceLock};

use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use tokio::sync::Semaphore;

use crate::config::AuthConfig;

#[derive(Clone)]
pub struct PasswordHashing {
    params: Params,
    permits: Arc<Semaphore>,
    /// `STOA_HASH_CONCURRENCY`: the permits the semaphore started with.
    bound: usize,
    /// A real hash of a random password: verified against when the account does not exist,
    /// so a login for an unknown email costs the same time as a wrong password. Computed on
    /// first use (on the blocking pool, under a permit), so an idle server never holds
    /// argon2's work area.
    dummy_hash: Arc<OnceLock<String>>,
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
            bound: config.hash_concurrency,
            dummy_hash: Arc::new(OnceLock::new()),
        })
    }

    fn hasher(params: Params) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
    }

    /// Hashes running or queued on the blocking pool right now, at most
    /// `STOA_HASH_CONCURRENCY`.
    pub fn running(&self) -> usize {
        self.bound.saturating_sub(self.permits.available_permits())
    }

    /// Runs `job` on the blocking pool while holding a permit. The permit moves into the
    /// job, so it is released when the hash ends, not when the caller stops waiting: a
    /// client that disconnects (or a request timeout) cannot free it while the hash still
    /// holds its work area.
    async fn bounded<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let permit = self.permits.clone().acquire_owned().await?;
        Ok(tokio::task::spawn_blocking(move || {
            let result = job();
            drop(permit);
            result
        })
        .await?)
    }

    pub async fn hash(&self, password: String) -> anyhow::Result<String> {
        let params = self.params.clone();
        self.bounded(move || {
            Self::hasher(params)
                .hash_password(password.as_bytes())
                .map(|hash| hash.to_string())
                .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))
        })
        .await?
    }

    /// Whether `stored` was made with other parameters than the configured ones. Such
    /// hashes cost a different time to verify than the dummy hash that stands in for
    /// unknown accounts, which would tell them apart; they are replaced at the next login.
    pub fn needs_rehash(&self, stored: &str) -> bool {
        let Ok(hash) = argon2::PasswordHash::new(stored) else {
            return true;
        };
        if hash.algorithm != argon2::ARGON2ID_IDENT {
            return true;
        }
        Params::try_from(&hash).map_or(true, |p| {
            p.m_cost() != self.params.m_cost()
                || p.t_cost() != self.params.t_cost()
                || p.p_cost() != self.params.p_cost()
        })
    }

    /// Verifies against `hash`, or against a dummy hash when there is no account, so both
    /// paths take the same time. Returns true only for a real match.
    pub async fn verify(&self, password: String, hash: Option<String>) -> anyhow::Result<bool> {
        let params = self.params.clone();
        let dummy = self.dummy_hash.clone();
        self.bounded(move || {
            let exists = hash.is_some();
            let hash = match hash {
                Some(hash) => hash,
                None => dummy
                    .get_or_init(|| {
                        let random: [u8; 16] = rand::random();
                        Self::hasher(params.clone())
                            .hash_password(&random)
                            .map(|h| h.to_string())
                            // Cannot fail for valid parameters; an unparsable hash
                            // below simply never matches.
                            .unwrap_or_default()
                    })
                    .clone(),
            };
            // Verification reads the parameters from the stored hash; `params` only
            // configures the hasher instance.
            let matched = Self::hasher(params)
                .verify_password(password.as_bytes(), hash.as_str())
                .is_ok();
            exists && matched
        })
        .await
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

    #[tokio::test]
    async fn a_caller_that_stops_waiting_does_not_free_the_hash_slot() {
        let mut config = Config::from_env(&Env::new(|_| None), true).unwrap().auth;
        // Slow enough to still be running when the caller gives up.
        config.argon2_memory_kib = 32 * 1024;
        config.argon2_iterations = 8;
        config.hash_concurrency = 1;
        let hashing = PasswordHashing::new(&config).unwrap();
        for _ in 0..3 {
            // A client disconnects (or the request times out) 1 ms into each hash.
            let abandoned = tokio::time::timeout(
                std::time::Duration::from_millis(1),
                hashing.hash("password".into()),
            )
            .await;
            assert!(abandoned.is_err(), "the hash outlives the wait");
            assert!(
                hashing.running() <= 1,
                "never more hashes than the bound: {}",
                hashing.running()
            );
        }
        // The first abandoned hash still holds its slot: the bound is not leaked.
        assert_eq!(hashing.running(), 1);
        let started = std::time::Instant::now();
        while hashing.running() > 0 {
            assert!(started.elapsed().as_secs() < 30);
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}
