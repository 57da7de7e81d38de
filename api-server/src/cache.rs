//! Redis cache for the hottest anonymous reads: article by slug, tags, and the first
//! pages of article lists. Entries are the exact response bytes, so cached and uncached
//! answers are byte-identical.
//!
//! Invalidation is explicit: every write that changes what an anonymous reader would see
//! deletes the affected entries (lists are tracked in a set so they can all be dropped at
//! once). The TTL only bounds the rare race where a reader stores a value computed just
//! before a concurrent write committed. Without Redis there is no cache: an in-process one
//! could not be invalidated across replicas.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use redis::{AsyncCommands, Script};

use crate::kv::Kv;
use crate::metrics::Metrics;

const LISTS: &str = "stoa:c:lists";
const ARTICLES: &str = "stoa:c:articles";
const TAGS: &str = "stoa:c:tags";

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub kind: &'static str,
    pub outcome: &'static str,
}

/// What a write changed.
#[derive(Debug, Clone)]
pub enum Change<'a> {
    /// Something that shows up in lists and in these articles' pages.
    Articles { slugs: &'a [&'a str], tags: bool },
    /// Author details embedded everywhere (username, bio, image).
    Everything,
}

#[derive(Clone)]
pub struct Cache {
    kv: Option<Arc<Kv>>,
    ttl: Duration,
    metrics: Arc<Metrics>,
    drop_tracked: Arc<Script>,
}

pub enum Key {
    Article(String),
    List(String),
    Tags,
}

impl Key {
    fn kind(&self) -> &'static str {
        match self {
            Key::Article(_) => "article",
            Key::List(_) => "list",
            Key::Tags => "tags",
        }
    }

    fn redis_key(&self) -> String {
        match self {
            Key::Article(slug) => format!("stoa:c:article:{slug}"),
            Key::List(query) => format!("stoa:c:list:{query}"),
            Key::Tags => TAGS.to_owned(),
        }
    }
}

impl Cache {
    pub fn new(kv: Option<Arc<Kv>>, ttl: Duration, metrics: Arc<Metrics>) -> Self {
        Cache {
            kv: kv.filter(|_| !ttl.is_zero()),
            ttl,
            metrics,
            drop_tracked: Arc::new(Script::new(DROP_TRACKED_LUA)),
        }
    }

    pub fn enabled(&self) -> bool {
        self.kv.is_some()
    }

    fn count(&self, kind: &'static str, outcome: &'static str) {
        self.metrics
            .cache_requests
            .get_or_create(&CacheLabels { kind, outcome })
            .inc();
    }

    pub async fn get(&self, key: &Key) -> Option<Bytes> {
        let kv = self.kv.as_ref()?;
        let redis_key = key.redis_key();
        let found = kv
            .run(|mut conn| async move { conn.get::<_, Option<Vec<u8>>>(redis_key).await })
            .await;
        match found {
            Some(Some(bytes)) => {
                self.count(key.kind(), "hit");
                Some(Bytes::from(bytes))
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
        let body = body.to_vec();
        kv.run(|mut conn| async move {
            let mut pipe = redis::pipe();
            pipe.atomic().set_ex(&redis_key, body, ttl).ignore();
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

    /// Drops what `change` made stale.
    pub async fn invalidate(&self, change: Change<'_>) {
        let Some(kv) = &self.kv else { return };
        let (sets, mut keys): (Vec<&str>, Vec<String>) = match change {
            Change::Articles { slugs, tags } => {
                let mut keys: Vec<String> = slugs
                    .iter()
                    .map(|s| Key::Article((*s).to_owned()).redis_key())
                    .collect();
                if tags {
                    keys.push(TAGS.to_owned());
                }
                (vec![LISTS], keys)
            }
            Change::Everything => (vec![LISTS, ARTICLES], vec![TAGS.to_owned()]),
        };
        let script = self.drop_tracked.clone();
        let done = kv
            .run(|mut conn| async move {
                if !keys.is_empty() {
                    conn.del::<_, ()>(std::mem::take(&mut keys)).await?;
                }
                let mut invocation = script.prepare_invoke();
                for set in sets {
                    invocation.key(set);
                }
                invocation.invoke_async::<()>(&mut conn).await
            })
            .await;
        if done.is_none() {
            // Redis missed this invalidation; the resync on recovery flushes the cache.
            tracing::warn!("cache invalidation skipped: redis unavailable");
        }
    }
}

/// Drops the whole cache (run on Redis recovery: writes during the outage could not
/// invalidate anything).
pub async fn flush(mut conn: redis::aio::ConnectionManager) -> anyhow::Result<()> {
    Script::new(DROP_TRACKED_LUA)
        .key(LISTS)
        .key(ARTICLES)
        .invoke_async::<()>(&mut conn)
        .await?;
    conn.del::<_, ()>(TAGS).await?;
    Ok(())
}
