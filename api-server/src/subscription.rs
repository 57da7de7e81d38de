//! Keeping a replica's local copy current from a subscription (Redis pub/sub, PostgreSQL
//! `LISTEN`): the copy is used only while the subscription is live, and a lost one is
//! retried with backoff. The revocation denylist, the cache copy and the writes feed of
//! read routing all follow this way.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::kv::Kv;
use crate::metrics::Metrics;

/// How often a quiet Redis subscription is pinged; a ping unanswered within the Redis
/// timeout ends it (a silent connection must not look live).
const PING_EVERY: Duration = Duration::from_secs(1);

/// Subscribes to the Redis `channel`, then runs `subscribed` (load what came before, mark
/// the copy live), then hands every message's payload to `on_message` and pings the
/// connection every second (calling `after_ping` on each answer), until the connection
/// fails or ends or the primary moves. `subscribed` runs only once the subscription is in
/// place, so nothing published after it is missed.
pub async fn follow_redis_channel(
    kv: &Kv,
    channel: &str,
    subscribed: impl Future<Output = anyhow::Result<()>>,
    mut on_message: impl FnMut(&[u8]),
    mut after_ping: impl FnMut(),
) -> anyhow::Result<()> {
    let timeout = kv.timeout();
    let (server, mut moved) = kv.subscription_target(channel).await?;
    let pubsub = tokio::time::timeout(timeout, server.get_async_pubsub()).await??;
    let (mut sink, mut stream) = pubsub.split();
    tokio::time::timeout(timeout, sink.subscribe(channel)).await??;
    subscribed.await?;
    let mut ping = tokio::time::interval(PING_EVERY);
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else { return Ok(()) };
                on_message(message.get_payload_bytes());
            }
            _ = ping.tick() => {
                // Subscribed, Redis answers ["pong", ""]: any answer will do.
                tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await??;
                after_ping();
            }
            // The old primary may live on as a replica: its messages would still arrive,
            // but this copy must start over from the new one.
            _ = moved.changed() => return Ok(()),
        }
    }
}

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
/// failure the copy is not live until the next subscription succeeds. A change on `wake`
/// (Redis's primary moved) cuts the wait between attempts short.
pub fn keep_following<Copy, Follow, Following>(
    copy: Arc<Copy>,
    metrics: Arc<Metrics>,
    stopped: impl Fn() -> bool + Send + 'static,
    mut wake: Option<tokio::sync::watch::Receiver<u64>>,
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
            match &mut wake {
                Some(wake) => {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = wake.changed() => backoff = Duration::from_millis(100),
                    }
                }
                None => tokio::time::sleep(backoff).await,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
}
