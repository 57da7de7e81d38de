//! The replica's own copy of the hottest cache entries, in front of Redis: a hit costs no
//! round trip.
//!
//! Safe across replicas because it is used only while the replica follows the
//! invalidation channel: every invalidation, whichever replica made it, is published
//! after the Redis entries are deleted, and drops the same entries here. While the
//! subscription is down the copy is empty and unused (reads go to Redis). A fill that
//! raced an invalidation is not kept: fills carry the generation they started in, and
//! every invalidation starts a new one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;

use crate::kv::Kv;
use crate::metrics::Metrics;
use crate::subscription::Followed;

/// The Redis channel invalidations are published on.
pub const CHANNEL: &str = "stoa:cache:invalidations";

/// An invalidation message: the Redis keys to drop, one per line; a key ending in `*`
/// drops every key with that prefix.
pub fn message<'a>(keys: impl IntoIterator<Item = &'a str>) -> String {
    keys.into_iter().collect::<Vec<_>>().join("\n")
}

#[derive(Clone)]
struct Entry {
    body: Bytes,
    stored: Instant,
}

#[derive(Clone)]
struct BodyBytes;

impl quick_cache::Weighter<String, Entry> for BodyBytes {
    fn weight(&self, key: &String, entry: &Entry) -> u64 {
        (key.len() + entry.body.len()) as u64
    }
}

pub struct NearCache {
    entries: quick_cache::sync::Cache<String, Entry, BodyBytes>,
    /// Entries older than this are not used (the Redis TTL: the bound on a racing fill).
    ttl: Duration,
    live: AtomicBool,
    generation: AtomicU64,
}

impl NearCache {
    /// `None` when `capacity_bytes` is 0 (disabled).
    pub fn new(capacity_bytes: u64, ttl: Duration) -> Option<Self> {
        (capacity_bytes > 0).then(|| NearCache {
            // Estimated entries: lists are ~10 KiB, articles ~2 KiB.
            entries: quick_cache::sync::Cache::with_weighter(
                (capacity_bytes / 4096).max(16) as usize,
                capacity_bytes,
                BodyBytes,
            ),
            ttl,
            live: AtomicBool::new(false),
            generation: AtomicU64::new(0),
        })
    }

    pub fn get(&self, key: &str) -> Option<Bytes> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        self.entries
            .get(key)
            .filter(|entry| entry.stored.elapsed() < self.ttl)
            .map(|entry| entry.body)
    }

    /// The generation a fill must start in (read before fetching from Redis).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keeps `body`, fetched after `generation()` returned `seen`, unless an invalidation
    /// arrived since (it may have been meant for this very value).
    pub fn fill(&self, key: &str, body: Bytes, seen: u64) {
        if !self.live.load(Ordering::Acquire) || self.generation() != seen {
            return;
        }
        self.entries.insert(
            key.to_owned(),
            Entry {
                body,
                stored: Instant::now(),
            },
        );
        // An invalidation that arrived during the insert: its drop may have run before
        // the entry was there.
        if self.generation() != seen {
            self.entries.remove(key);
        }
    }

    /// Applies an invalidation message.
    pub fn invalidate(&self, message: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        for key in message.lines() {
            match key.strip_suffix('*') {
                Some(prefix) => self.entries.retain(|k, _| !k.starts_with(prefix)),
                None => {
                    self.entries.remove(key);
                }
            }
        }
    }
}

impl Followed for NearCache {
    const NAME: &'static str = "cache invalidation feed";
    const WHILE_DOWN: &'static str = "cached reads go to Redis";

    fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    fn set_live(&self, live: bool, metrics: &Metrics) {
        // Either way the copy starts empty: messages may have been missed.
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.clear();
        self.live.store(live, Ordering::Release);
        metrics.set_dependency_up("cache_feed", live);
    }
}

/// Follows the invalidation channel for as long as the process runs, reconnecting after
/// a failure (the copy is unused until the subscription is back).
pub fn spawn(near: Arc<NearCache>, kv: Arc<Kv>, metrics: Arc<Metrics>) {
    crate::subscription::keep_following(
        near.clone(),
        metrics.clone(),
        || false,
        Some(kv.moves()),
        move || {
            let (near, kv, metrics) = (near.clone(), kv.clone(), metrics.clone());
            async move { follow(&near, &kv, &metrics).await }
        },
    );
}

async fn follow(near: &NearCache, kv: &Kv, metrics: &Metrics) -> anyhow::Result<()> {
    // Subscribed: every invalidation from now on arrives here; the copy starts empty.
    let subscribed = async {
        near.set_live(true, metrics);
        Ok(())
    };
    crate::subscription::follow_redis_channel(
        kv,
        CHANNEL,
        subscribed,
        |payload| match std::str::from_utf8(payload) {
            Ok(keys) => near.invalidate(keys),
            // Unreadable: drop everything rather than guess.
            Err(_) => near.invalidate("*"),
        },
        || {},
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live_cache() -> NearCache {
        let near = NearCache::new(1 << 20, Duration::from_secs(60)).unwrap();
        near.live.store(true, Ordering::Release);
        near
    }

    #[test]
    fn unused_until_live_and_emptied_when_the_feed_drops() {
        let near = NearCache::new(1 << 20, Duration::from_secs(60)).unwrap();
        near.fill("a", Bytes::from_static(b"1"), near.generation());
        assert_eq!(near.get("a"), None, "not live: nothing kept");
        let metrics = Metrics::new(0);
        near.set_live(true, &metrics);
        near.fill("a", Bytes::from_static(b"1"), near.generation());
        assert_eq!(near.get("a").as_deref(), Some(&b"1"[..]));
        near.set_live(false, &metrics);
        assert_eq!(near.get("a"), None);
        near.set_live(true, &metrics);
        assert_eq!(near.get("a"), None, "a new subscription starts empty");
    }

    #[test]
    fn invalidations_drop_named_keys_and_prefixes() {
        let near = live_cache();
        for key in [
            "stoa:c:article:a",
            "stoa:c:article:b",
            "stoa:c:list:1",
            "stoa:c:list:2",
        ] {
            near.fill(key, Bytes::from_static(b"x"), near.generation());
        }
        near.invalidate(&message(["stoa:c:article:a", "stoa:c:list:*"]));
        assert_eq!(near.get("stoa:c:article:a"), None);
        assert!(near.get("stoa:c:article:b").is_some());
        assert_eq!(near.get("stoa:c:list:1"), None);
        assert_eq!(near.get("stoa:c:list:2"), None);
        near.invalidate("stoa:c:*");
        assert_eq!(near.get("stoa:c:article:b"), None);
    }

    #[test]
    fn a_fill_that_raced_an_invalidation_is_not_kept() {
        let near = live_cache();
        let seen = near.generation();
        // The value was read from Redis, then an invalidation arrived before the fill.
        near.invalidate("stoa:c:article:a");
        near.fill("stoa:c:article:a", Bytes::from_static(b"old"), seen);
        assert_eq!(near.get("stoa:c:article:a"), None);
    }

    #[test]
    fn entries_expire_with_the_redis_ttl() {
        let near = NearCache::new(1 << 20, Duration::from_millis(20)).unwrap();
        near.live.store(true, Ordering::Release);
        near.fill("a", Bytes::from_static(b"1"), near.generation());
        assert!(near.get("a").is_some());
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(near.get("a"), None);
    }
}
