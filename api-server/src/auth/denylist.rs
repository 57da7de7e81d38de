//! A local copy of the denylist, so a signed-in request checks revocation without a
//! network round trip.
//!
//! Kept current by a feed: Redis pub/sub when Redis is configured (here), PostgreSQL
//! `LISTEN`/`NOTIFY` otherwise ([`crate::auth::revocations_listen`]). With Redis, every revocation is published on [`CHANNEL`] after it is
//! committed to PostgreSQL (by the replica that made it, or by the catch-up of any replica
//! when the one that made it could not reach Redis). The feed subscribes first and then
//! loads every revocation that can still matter from PostgreSQL, so nothing committed
//! before the subscription is missed and everything after it arrives as a message. While
//! the feed is not live (not configured, connecting, loading, or its connection failed a
//! ping) [`LocalDenylist::check`] answers `None` and callers ask Redis and PostgreSQL as
//! before.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::Pool;
use crate::kv::Kv;
use crate::metrics::Metrics;
use crate::subscription::Followed;

pub const CHANNEL: &str = "stoa:revocations";

/// How long the mirror must keep revocations: tokens verify until `exp` plus the leeway.
#[derive(Clone, Copy, Debug)]
pub struct MirrorWindow {
    pub access_ttl: Duration,
    pub leeway: Duration,
}

impl MirrorWindow {
    pub fn of(auth: &crate::config::AuthConfig) -> MirrorWindow {
        MirrorWindow {
            access_ttl: auth.access_token_ttl,
            leeway: auth.leeway,
        }
    }

    /// A revoked family stays denied while any access token of it can still verify: one
    /// issued just before the revocation lives `access_ttl`, plus the leeway.
    pub fn family_window(self) -> Duration {
        self.access_ttl + self.leeway
    }

    pub(crate) fn family_ttl(self) -> u64 {
        self.family_window().as_secs().max(1)
    }

    /// Until when (unix seconds) a revoked `jti` denies its token: `exp` plus the leeway.
    pub(crate) fn jti_until(self, expires_at: DateTime<Utc>) -> i64 {
        expires_at.timestamp() + i64::try_from(self.leeway.as_secs()).unwrap_or(i64::MAX / 4)
    }

    /// Until when (unix seconds) a family revoked at `revoked_at` denies its tokens.
    pub(crate) fn family_until(self, revoked_at: DateTime<Utc>) -> i64 {
        revoked_at.timestamp() + i64::try_from(self.family_ttl()).unwrap_or(i64::MAX / 4)
    }

    /// A revoked `jti` stays denied until its token's `exp` plus the leeway.
    pub(crate) fn jti_ttl(self, expires_at: DateTime<Utc>, now: DateTime<Utc>) -> Option<u64> {
        let remaining = (expires_at - now).num_seconds() + self.leeway.as_secs() as i64;
        u64::try_from(remaining).ok().filter(|ttl| *ttl > 0)
    }
}

/// What a revocation denies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// One access token, by `jti`.
    Token(Uuid),
    /// Every access token of a refresh-token family.
    Family(Uuid),
}

/// One message: `j <uuid> <unix seconds>` or `f <uuid> <unix seconds>`, denied until then.
pub fn message(denied: Denied, until: i64) -> String {
    match denied {
        Denied::Token(id) => format!("j {id} {until}"),
        Denied::Family(id) => format!("f {id} {until}"),
    }
}

pub(crate) fn parse(message: &str) -> Option<(Denied, i64)> {
    let mut parts = message.split(' ');
    let kind = parts.next()?;
    let id: Uuid = parts.next()?.parse().ok()?;
    let until: i64 = parts.next()?.parse().ok()?;
    let denied = match kind {
        "j" => Denied::Token(id),
        "f" => Denied::Family(id),
        _ => return None,
    };
    Some((denied, until))
}

#[derive(Default)]
pub(crate) struct Entries {
    tokens: HashMap<Uuid, i64>,
    families: HashMap<Uuid, i64>,
}

impl Entries {
    fn add(&mut self, denied: Denied, until: i64) {
        let (map, id) = match denied {
            Denied::Token(id) => (&mut self.tokens, id),
            Denied::Family(id) => (&mut self.families, id),
        };
        let entry = map.entry(id).or_insert(until);
        *entry = (*entry).max(until);
    }
}

#[derive(Default)]
pub struct LocalDenylist {
    entries: RwLock<Entries>,
    live: AtomicBool,
}

impl LocalDenylist {
    /// `Some(revoked)` while the feed is live; `None`: ask the shared stores.
    pub fn check(&self, jti: Uuid, family: Option<Uuid>, now: i64) -> Option<bool> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        let entries = self.entries.read().ok()?;
        let denied = |map: &HashMap<Uuid, i64>, id: &Uuid| map.get(id).is_some_and(|u| *u >= now);
        Some(denied(&entries.tokens, &jti) || family.is_some_and(|f| denied(&entries.families, &f)))
    }

    /// Records a revocation (this replica's own at once; others' as they arrive).
    pub fn add(&self, denied: Denied, until: i64) {
        if let Ok(mut entries) = self.entries.write() {
            entries.add(denied, until);
        }
    }

    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Replaces everything with a fresh load, keeping what arrived meanwhile.
    pub(crate) fn replace(&self, loaded: Entries) {
        if let Ok(mut entries) = self.entries.write() {
            let arrived = std::mem::replace(&mut *entries, loaded);
            for (id, until) in arrived.tokens {
                entries.add(Denied::Token(id), until);
            }
            for (id, until) in arrived.families {
                entries.add(Denied::Family(id), until);
            }
        }
    }

    pub(crate) fn prune(&self, now: i64) {
        if let Ok(mut entries) = self.entries.write() {
            entries.tokens.retain(|_, until| *until >= now);
            entries.families.retain(|_, until| *until >= now);
        }
    }
}

/// Every revocation that can still deny a token, with the time it stops mattering.
pub(crate) async fn load(db: &Pool, window: MirrorWindow) -> sqlx::Result<Entries> {
    let tokens: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT jti, expires_at FROM revoked_tokens
          WHERE expires_at > now() - make_interval(secs => $1)",
    )
    .bind(window.leeway.as_secs_f64())
    .fetch_all(db)
    .await?;
    let families: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT family_id, max(revoked_at) FROM refresh_tokens
          WHERE revoked_at > now() - make_interval(secs => $1)
          GROUP BY family_id",
    )
    .bind(window.family_window().as_secs_f64())
    .fetch_all(db)
    .await?;
    let mut entries = Entries::default();
    for (id, expires_at) in tokens {
        entries.add(Denied::Token(id), window.jti_until(expires_at));
    }
    for (id, revoked_at) in families {
        entries.add(Denied::Family(id), window.family_until(revoked_at));
    }
    Ok(entries)
}

impl Followed for LocalDenylist {
    const NAME: &'static str = "revocation feed";
    const WHILE_DOWN: &'static str = "checking revocations in Redis or PostgreSQL";

    fn is_live(&self) -> bool {
        LocalDenylist::is_live(self)
    }

    fn set_live(&self, live: bool, metrics: &Metrics) {
        self.live.store(live, Ordering::Release);
        metrics.set_dependency_up("revocation_feed", live);
    }
}

/// Keeps `list` current from Redis for as long as the process runs.
pub fn spawn(
    list: Arc<LocalDenylist>,
    kv: Arc<Kv>,
    pool: impl Fn() -> Pool + Send + 'static,
    window: MirrorWindow,
    metrics: Arc<Metrics>,
) {
    crate::subscription::keep_following(
        list.clone(),
        metrics.clone(),
        || false,
        Some(kv.moves()),
        move || {
            let (list, kv, metrics, db) = (list.clone(), kv.clone(), metrics.clone(), pool());
            async move { follow(&list, &kv, &db, window, &metrics).await }
        },
    );
}

async fn follow(
    list: &LocalDenylist,
    kv: &Kv,
    db: &Pool,
    window: MirrorWindow,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    // Subscribed: from here every revocation arrives as a message; everything committed
    // before is in PostgreSQL.
    let subscribed = async {
        list.replace(load(db, window).await?);
        list.set_live(true, metrics);
        tracing::info!("revocation feed live: revocations are checked locally");
        Ok(())
    };
    crate::subscription::follow_redis_channel(
        kv,
        CHANNEL,
        subscribed,
        |payload| match std::str::from_utf8(payload).ok().and_then(parse) {
            Some((denied, until)) => list.add(denied, until),
            None => tracing::warn!("ignored a malformed revocation message"),
        },
        || list.prune(chrono::Utc::now().timestamp()),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let id = Uuid::new_v4();
        for denied in [Denied::Token(id), Denied::Family(id)] {
            assert_eq!(
                parse(&message(denied, 1_800_000_000)),
                Some((denied, 1_800_000_000))
            );
        }
        assert_eq!(parse("x 1 2"), None);
        assert_eq!(parse(&format!("j {id}")), None);
        assert_eq!(parse("j not-a-uuid 5"), None);
    }

    #[test]
    fn answers_only_while_live_and_until_the_entry_ends() {
        let list = LocalDenylist::default();
        let (jti, family) = (Uuid::new_v4(), Uuid::new_v4());
        list.add(Denied::Family(family), 100);
        assert_eq!(list.check(jti, Some(family), 50), None, "not live yet");
        list.live.store(true, Ordering::Release);
        assert_eq!(list.check(jti, Some(family), 50), Some(true));
        assert_eq!(list.check(jti, None, 50), Some(false));
        assert_eq!(list.check(jti, Some(family), 101), Some(false), "ended");
        // A reload keeps what arrived while it ran.
        list.add(Denied::Token(jti), 200);
        list.replace(Entries::default());
        assert_eq!(list.check(jti, None, 150), Some(true));
        list.prune(201);
        assert_eq!(list.check(jti, None, 150), Some(false));
    }
}
