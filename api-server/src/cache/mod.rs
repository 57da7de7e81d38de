//! Redis cache for the hottest anonymous reads: article by slug, tags, and the first
//! pages of article lists. Entries are the exact response bytes, so cached and uncached
//! answers are byte-identical.
//!
//! Invalidation is explicit: every write that changes what an anonymous reader would see
//! deletes the affected entries (lists are tracked in a set so they can all be dropped at
//! once). The TTL only bounds the rare race where a reader stores a value computed just
//! before a concurrent write committed. Without Redis there is no cache: an in-process one
//! could not be invalidated across replicas.
//!
//! In front of Redis, each replica keeps its own copy of the hottest entries (`near`),
//! used only while it follows the invalidations every replica publishes. Signed-in
//! readers' feeds (first pages) are kept there only, never in Redis: each is one reader's,
//! so a replica's copy serves the reader's next page loads, and any write that could
//! change any feed drops them all (`FEEDS`), a change of whom a reader follows that
//! reader's.

pub mod near;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use redis::{AsyncCommands, Script};

use crate::kv::Kv;
use crate::metrics::{CacheLabels, Metrics};
use crate::subscription::Followed;
use near::NearCache;

// Every cache key carries the hash tag `{c}`: in a Redis Cluster the entries and the sets
// tracking them share a slot, so an entry and its set change in one transaction and the
// invalidation script sees every key it deletes.
const LISTS: &str = "stoa:{c}:lists";
const ARTICLES: &str = "stoa:{c}:articles";
const TAGS: &str = "stoa:{c}:tags";
/// Every reader's feed, in the replicas' own copies.
const FEEDS: &str = "stoa:{c}:feed:*";

// Deletes every key in the sets given as KEYS, then the sets themselves.
const DROP_TRACKED_LUA: &str = r"
for _, set in ipairs(KEYS) do
  local members = redis.call('SMEMBERS', set)
  for i = 1, #members, 500 do
    redis.call('DEL', unpack(members, i, math.min(i + 499, #members)))
  end
  redis.call('DEL', set)
end
return 0
";

/// What a write changed.
#[derive(Debug, Clone)]
pub enum Change<'a> {
    /// Something that shows up in lists and in these articles' pages.
    Articles { slugs: &'a [&'a str], tags: bool },
    /// Author details embedded everywhere (username, bio, image).
    Everything,
    /// Whom this reader follows: their feed.
    Follows(uuid::Uuid),
}

#[derive(Clone)]
pub struct Cache {
    kv: Option<Arc<Kv>>,
    ttl: Duration,
    metrics: Arc<Metrics>,
    drop_tracked: Arc<Script>,
    near: Option<Arc<NearCache>>,
}

pub enum Key {
    Article(String),
    List(String),
    Tags,
}

/// Anonymous list pages with an offset below this are cached ("the first pages").
pub const CACHED_OFFSETS: i64 = 100;

/// The key of a reader's feed page (first pages only, as for lists), in the replicas'
/// own copies.
pub fn feed_key(reader: uuid::Uuid, limit: i64, offset: i64) -> Option<String> {
    (offset < CACHED_OFFSETS).then(|| format!("stoa:{{c}}:feed:{reader}:{limit}:{offset}"))
}

/// The key of an anonymous list page, from its validated parameters.
pub fn list_key(
    limit: i64,
    offset: i64,
    tag: Option<&str>,
    author: Option<&str>,
    favorited: Option<&str>,
) -> Option<Key> {
    // Canonical: parsed values, fixed order, unambiguous encoding.
    (offset < CACHED_OFFSETS)
        .then(|| Key::List(serde_json::json!([limit, offset, tag, author, favorited]).to_string()))
}

/// The cache key an anonymous GET of `path?query` reads, if it is a cached route. Used by
/// the per-IP limiter to fetch the entry in the same Redis round trip as its decision;
/// handlers only use the prefetched entry when their own key is identical.
pub fn key_for_request(path: &str, query: Option<&str>) -> Option<Key> {
    #[derive(serde::Deserialize)]
    struct ListParams {
        tag: Option<String>,
        author: Option<String>,
        favorited: Option<String>,
        q: Option<String>,
        limit: Option<i64>,
        offset: Option<i64>,
    }
    match path {
        "/api/tags" => Some(Key::Tags),
        "/api/articles" => {
            let p: ListParams = serde_urlencoded::from_str(query.unwrap_or("")).ok()?;
            // Searches are not cached.
            if p.q.is_some() {
                return None;
            }
            let (limit, offset) = crate::paging::resolve(p.limit, p.offset).ok()?;
            list_key(
                limit,
                offset,
                p.tag.as_deref(),
                p.author.as_deref(),
                p.favorited.as_deref(),
            )
        }
        _ => {
            let slug = path.strip_prefix("/api/articles/")?;
            if slug.is_empty() || slug.contains('/') || slug == "feed" {
                return None;
            }
            let slug = percent_encoding::percent_decode_str(slug)
                .decode_utf8()
                .ok()?;
            Some(Key::Article(slug.into_owned()))
        }
    }
}

/// An entry fetched together with the rate-limit decision (`None` body: not cached).
#[derive(Clone, Debug)]
pub struct Prefetched {
    pub redis_key: String,
    pub body: Option<Bytes>,
}

impl Key {
    fn kind(&self) -> &'static str {
        match self {
            Key::Article(_) => "article",
            Key::List(_) => "list",
            Key::Tags => "tags",
        }
    }

    pub fn redis_key(&self) -> String {
        match self {
            Key::Article(slug) => format!("stoa:{{c}}:article:{slug}"),
            Key::List(query) => format!("stoa:{{c}}:list:{query}"),
            Key::Tags => TAGS.to_owned(),
        }
    }
}

impl Cache {
    /// `near_bytes`: the replica's own copy's capacity (0: none).
    pub fn new(kv: Option<Arc<Kv>>, ttl: Duration, near_bytes: u64, metrics: Arc<Metrics>) -> Self {
        let kv = kv.filter(|_| !ttl.is_zero());
        let near = kv
            .as_ref()
            .and_then(|_| NearCache::new(near_bytes, ttl))
            .map(Arc::new);
        Cache {
            kv,
            ttl,
            metrics,
            drop_tracked: Arc::new(Script::new(DROP_TRACKED_LUA)),
            near,
        }
    }

    /// The replica's own copy, to be kept current by `near::spawn`.
    pub fn near(&self) -> Option<&Arc<NearCache>> {
        self.near.as_ref()
    }

    /// The entry in the replica's own copy, without any round trip.
    pub fn near_get(&self, redis_key: &str) -> Option<Bytes> {
        self.near.as_ref()?.get(redis_key)
    }

    /// The generation a Redis read that may fill the replica's copy starts in.
    pub fn near_generation(&self) -> u64 {
        self.near.as_ref().map_or(0, |near| near.generation())
    }

    /// Keeps an entry read from Redis in the replica's copy (see `NearCache::fill`).
    pub fn near_fill(&self, redis_key: &str, body: &Bytes, seen: u64) {
        if let Some(near) = &self.near {
            near.fill(redis_key, body.clone(), seen);
        }
    }

    pub fn enabled(&self) -> bool {
        self.kv.is_some()
    }

    /// A reader's feed page from this replica's copy (see [`feed_key`]). `Err` carries
    /// the generation to fill it in after a miss; `None` when there is no copy to use.
    pub fn feed_lookup(&self, key: &str) -> Option<Result<Bytes, u64>> {
        let near = self.near.as_ref().filter(|near| near.is_live())?;
        let seen = near.generation();
        match near.get(key) {
            Some(body) => {
                self.count("feed", "hit");
                Some(Ok(body))
            }
            None => {
                self.count("feed", "miss");
                Some(Err(seen))
            }
        }
    }

    fn count(&self, kind: &'static str, outcome: &'static str) {
        self.metrics
            .cache_requests
            .get_or_create(&CacheLabels { kind, outcome })
            .inc();
    }

    /// Like `get`, but uses what the limiter already fetched for this request when it is
    /// the same entry (saving a round trip).
    pub async fn lookup(&self, key: &Key, prefetched: Option<&Prefetched>) -> Option<Bytes> {
        if let Some(found) = prefetched.filter(|p| self.enabled() && p.redis_key == key.redis_key())
        {
            self.count(
                key.kind(),
                if found.body.is_some() { "hit" } else { "miss" },
            );
            return found.body.clone();
        }
        self.get(key).await
    }

    pub async fn get(&self, key: &Key) -> Option<Bytes> {
        let kv = self.kv.as_ref()?;
        let redis_key = key.redis_key();
        if let Some(body) = self.near_get(&redis_key) {
            self.count(key.kind(), "hit");
            return Some(body);
        }
        let seen = self.near_generation();
        let fetched_key = redis_key.clone();
        let found = kv
            .run(|mut conn| async move { conn.get::<_, Option<Vec<u8>>>(fetched_key).await })
            .await;
        match found {
            Some(Some(bytes)) => {
                self.count(key.kind(), "hit");
                let body = Bytes::from(bytes);
                self.near_fill(&redis_key, &body, seen);
                Some(body)
            }
            Some(None) => {
                self.count(key.kind(), "miss");
                None
            }
            None => {
                self.count(key.kind(), "unavailable");
                None
            }
        }
    }

    pub async fn put(&self, key: &Key, body: &Bytes) {
        let Some(kv) = &self.kv else { return };
        let redis_key = key.redis_key();
        let tracking_set = match key {
            Key::Article(_) => Some(ARTICLES),
            Key::List(_) => Some(LISTS),
            Key::Tags => None,
        };
        let ttl = self.ttl.as_secs().max(1);
        // `Bytes` clones share the buffer; the pipeline encodes from the slice.
        let body = body.clone();
        kv.run(|mut conn| async move {
            let mut pipe = redis::pipe();
            pipe.atomic().set_ex(&redis_key, &body[..], ttl).ignore();
            if let Some(set) = tracking_set {
                pipe.sadd(set, &redis_key)
                    .ignore()
                    .expire(set, (ttl * 2) as i64)
                    .ignore();
            }
            pipe.query_async::<()>(&mut conn).await
        })
        .await;
    }

    /// Drops what `change` made stale, in Redis and in every replica's own copy.
    pub async fn invalidate(&self, change: Change<'_>) {
        let Some(kv) = &self.kv else { return };
        // The tracked sets and keys to delete in Redis, and the prefixes of what only the
        // replicas' copies hold (or what the sets' members share) for them to drop.
        let (sets, keys, prefixes): (Vec<&str>, Vec<String>, Vec<String>) = match change {
            Change::Articles { slugs, tags } => {
                let mut keys: Vec<String> = slugs
                    .iter()
                    .map(|s| Key::Article((*s).to_owned()).redis_key())
                    .collect();
                if tags {
                    keys.push(TAGS.to_owned());
                }
                (
                    vec![LISTS],
                    keys,
                    vec!["stoa:{c}:list:*".into(), FEEDS.into()],
                )
            }
            Change::Everything => (
                vec![LISTS, ARTICLES],
                vec![TAGS.to_owned()],
                vec!["stoa:{c}:*".into(), FEEDS.into()],
            ),
            // A reader's feed lives only in the replicas' copies: nothing to delete.
            Change::Follows(reader) => {
                (vec![], vec![], vec![format!("stoa:{{c}}:feed:{reader}:*")])
            }
        };
        let message = near::message(keys.iter().chain(&prefixes).map(String::as_str));
        let script = self.drop_tracked.clone();
        let published = message.clone();
        let deadline = kv.timeout();
        let done = kv
            .run(|mut conn| async move {
                // Half the deadline at most, so that the announcement is still sent when
                // the entries' node hangs.
                let deleted = tokio::time::timeout(deadline / 2, async {
                    if !keys.is_empty() {
                        conn.del::<_, ()>(keys).await?;
                    }
                    if !sets.is_empty() {
                        let mut invocation = script.prepare_invoke();
                        for set in sets {
                            invocation.key(set);
                        }
                        invocation.invoke_async::<()>(&mut conn).await?;
                    }
                    Ok::<_, redis::RedisError>(())
                })
                .await
                .unwrap_or_else(|_| {
                    Err(redis::RedisError::from(std::io::Error::from(
                        std::io::ErrorKind::TimedOut,
                    )))
                });
                // After the deletions: a replica that refills from Redis on this message
                // reads the new state. Sent even when they failed (in a cluster the
                // channel's node may be up): the copies must drop the entries, and Redis
                // is resynced (flushed) before it is trusted again.
                let published = conn.publish::<_, _, ()>(near::CHANNEL, published).await;
                deleted.and(published)
            })
            .await;
        // This replica's own copy at once (its subscription would drop it a moment
        // later): the writer's next read must see its write.
        if let Some(near) = &self.near {
            near.invalidate(&message);
        }
        if done.is_none() {
            // Redis missed this invalidation; the resync on recovery flushes the cache,
            // and the replicas' copies are emptied when their subscriptions drop.
            tracing::warn!("cache invalidation skipped: redis unavailable");
        }
    }
}

/// Drops the whole cache (run on Redis recovery: writes during the outage could not
/// invalidate anything).
pub async fn flush(mut conn: crate::kv::Connection) -> anyhow::Result<()> {
    Script::new(DROP_TRACKED_LUA)
        .key(LISTS)
        .key(ARTICLES)
        .invoke_async::<()>(&mut conn)
        .await?;
    conn.del::<_, ()>(TAGS).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis_key(key: Option<Key>) -> Option<String> {
        key.map(|k| k.redis_key())
    }

    #[test]
    fn request_keys_match_the_keys_handlers_use() {
        assert_eq!(
            redis_key(key_for_request("/api/articles", Some("tag=rust&limit=5"))),
            redis_key(list_key(5, 0, Some("rust"), None, None))
        );
        assert_eq!(
            redis_key(key_for_request("/api/articles", None)),
            redis_key(list_key(20, 0, None, None, None))
        );
        // Clamped like the handler clamps.
        assert_eq!(
            redis_key(key_for_request("/api/articles", Some("limit=1000"))),
            redis_key(list_key(100, 0, None, None, None))
        );
        assert_eq!(
            redis_key(key_for_request("/api/articles", Some("offset=100"))),
            None
        );
        assert_eq!(
            redis_key(key_for_request("/api/articles", Some("limit=abc"))),
            None
        );
        assert_eq!(
            redis_key(key_for_request("/api/tags", None)),
            Some(Key::Tags.redis_key())
        );
        assert_eq!(
            redis_key(key_for_request("/api/articles/%D0%BF%D1%80%D0%B8", None)),
            Some(Key::Article("при".into()).redis_key())
        );
        for uncached in [
            "/api/articles/feed",
            "/api/articles/x/comments",
            "/api/user",
            "/api/profiles/x",
        ] {
            assert!(key_for_request(uncached, None).is_none(), "{uncached}");
        }
    }
}
