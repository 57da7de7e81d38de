//! Keeping a replica's local copy current from a subscription (Redis pub/sub, PostgreSQL
//! `LISTEN`): the copy is used only while the subscription is live, and a lost one is
//! retried with backoff. The revocation denylist and the cache copy both follow this way.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;

/// A local copy kept current by a subscription.
pub trait Followed: Send + Sync + 'static {
    /// The `dependency` label of its `stoa_dependency_up` series, and its name in logs.
    const NAME: &'static str;
    /// What serves requests while it is not live (for the outage warning).
    const WHILE_DOWN: &'static str;

    fn is_live(&self) -> bool;
    /// Marks it live or not (and its series); a copy that may have missed messages must
    /// forget or reload them here or in `follow`.
    fn set_live(&self, live: bool, metrics: &Metrics);
}

/// Runs `follow` (subscribe, load, follow) again and again until `stopped`; after any
/// failure the copy is not live until the next subscription succeeds.
pub fn keep_following<Copy, Follow, Following>(
    copy: Arc<Copy>,
    metrics: Arc<Metrics>,
    stopped: impl Fn() -> bool + Send + 'static,
    mut follow: Follow,
) where
    Copy: Followed,
    Follow: FnMut() -> Following + Send + 'static,
    Following: Future<Output = anyhow::Result<()>> + Send,
{
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        let mut warned = false;
        loop {
            let result = follow().await;
            if stopped() {
                copy.set_live(false, &metrics);
                return;
            }
            // Only `follow` makes the copy live: if it is, this was an outage after a
            // working feed, not one more failed attempt.
            let was_live = copy.is_live();
            copy.set_live(false, &metrics);
            if was_live {
                warned = false;
                backoff = Duration::from_millis(100);
            }
            // One warning per outage; retries are quiet.
            match result {
                Err(e) if !warned => {
                    tracing::warn!(error = %e, "{} down: {} until it is back", Copy::NAME, Copy::WHILE_DOWN);
                    warned = true;
                }
                Err(e) => tracing::debug!(error = %e, "{} still down", Copy::NAME),
                Ok(()) => tracing::info!("{} ended; reconnecting", Copy::NAME),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
}
