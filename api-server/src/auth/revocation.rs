//! Revocation of access tokens, by `jti` (logout) or by refresh-token family (logout,
//! reuse detection, password change).
//!
//! PostgreSQL is authoritative (`revoked_tokens`, `refresh_tokens.revoked_at`); Redis
//! mirrors it with TTLs that outlast every token they deny: a token is accepted until
//! `exp` + `STOA_JWT_LEEWAY`, so a mirror key lives that long too (an expired key would be
//! read as "not revoked" while the token still verifies). Checks ask Redis first and
//! fall back to PostgreSQL whenever Redis is not trusted (not configured, down, or not yet
//! resynced after an outage). In the common case neither is asked: each replica keeps a
//! local copy ([`crate::auth::denylist`]) fed by Redis pub/sub (every revocation is
//! published after it is mirrored) or, without Redis, by PostgreSQL notifications sent as
//! revocations commit ([`crate::auth::revocations_listen`]).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use uuid::Uuid;

pub use crate::auth::denylist::MirrorWindow;
use crate::auth::denylist::{self, Denied, LocalDenylist};
use crate::db::Pool;
use crate::kv::{Connection, Kv};
use crate::metrics::Metrics;

// One hash tag for every revocation key and the synced marker: in a cluster they share a
// node, so a check's `MGET` (marker and keys) is one slot and that node's data loss shows.
fn jti_key(jti: Uuid) -> String {
    format!("stoa:{{revoked}}:jti:{jti}")
}

fn family_key(family: Uuid) -> String {
    format!("stoa:{{revoked}}:fam:{family}")
}

#[derive(Clone)]
pub struct Revocations {
    kv: Option<Arc<Kv>>,
    window: MirrorWindow,
    /// This replica's copy of the denylist (answers once its feed is live).
    local: Arc<LocalDenylist>,
    metrics: Arc<Metrics>,
}

impl Revocations {
    pub fn new(kv: Option<Arc<Kv>>, window: MirrorWindow, metrics: Arc<Metrics>) -> Self {
        Revocations {
            kv,
            window,
            local: Arc::default(),
            metrics,
        }
    }

    /// The local copy and what keeps it current, for the feed to be started with.
    pub fn feed(&self) -> (Arc<LocalDenylist>, MirrorWindow) {
        (self.local.clone(), self.window)
    }

    /// The answer of this replica's own copy alone: `None` while its feed is not live.
    pub fn check_local(&self, jti: Uuid, family: Option<Uuid>) -> Option<bool> {
        self.local.check(jti, family, Utc::now().timestamp())
    }

    pub async fn is_revoked(
        &self,
        db: &Pool,
        jti: Uuid,
        family: Option<Uuid>,
    ) -> Result<bool, sqlx::Error> {
        if let Some(answer) = self.local.check(jti, family, Utc::now().timestamp()) {
            return Ok(answer);
        }
        if let Some(kv) = &self.kv {
            // The marker comes in the same round trip: a Redis that lost its data since the
            // last probe is noticed here, not up to a probe interval later.
            let mut keys = vec![crate::kv::SYNCED_MARKER.to_owned(), jti_key(jti)];
            keys.extend(family.map(family_key));
            let found = kv
                .run(|mut conn| async move { conn.mget::<_, Vec<Option<u8>>>(keys).await })
                .await;
            match found {
                Some(values) if values.first().is_some_and(Option::is_some) => {
                    return Ok(values[1..].iter().any(Option::is_some));
                }
                Some(_) => kv.distrust("redis lost its data; resyncing before trusting it"),
                None => {}
            }
        }
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = $1)
                 OR EXISTS (SELECT 1 FROM refresh_tokens WHERE family_id = $2 AND revoked_at IS NOT NULL)",
        )
        .bind(jti)
        .bind(family)
        .fetch_one(db)
        .await
    }

    /// Mirrors revocations already committed to PostgreSQL: into this replica's local
    /// copy at once (its own caller's next request must see it, before any feed brings
    /// it back), into Redis, and to every other replica's copy (published). Tried even
    /// while this replica's breaker is open: revocations are rare, and a breaker opened by
    /// one slow probe would otherwise leave the other replicas' copies (still live) a probe
    /// interval behind. Best effort: if Redis misses one (counted), checks use PostgreSQL
    /// until the resync on recovery restores it, and the catch-up of any replica that
    /// reaches Redis publishes it. Without Redis, the other replicas hear of it from
    /// PostgreSQL when it commits.
    pub async fn mirror(&self, jti: Option<(Uuid, DateTime<Utc>)>, families: &[Uuid]) {
        if jti.is_none() && families.is_empty() {
            return;
        }
        let window = self.window;
        let now = Utc::now();
        let mut denied: Vec<(Denied, i64)> = families
            .iter()
            .map(|f| (Denied::Family(*f), window.family_until(now)))
            .collect();
        if let Some((jti, expires_at)) = jti {
            denied.push((Denied::Token(jti), window.jti_until(expires_at)));
        }
        for (what, until) in &denied {
            self.local.add(*what, *until);
        }
        let Some(kv) = &self.kv else { return };
        let mirrored = kv
            .run_despite_breaker(|conn| async move {
                let mut mirror = Mirror::default();
                for (what, until) in denied {
                    mirror.add(what, until, now);
                }
                mirror.send(&conn).await
            })
            .await;
        if mirrored.is_none() {
            self.metrics.revocation_mirror_failures.inc();
        }
    }
}

/// Revocations' mirror keys and their announcements to every replica's local copy, as two
/// pipelines: in a Redis Cluster a pipeline goes to one node, and `PUBLISH` is routed by
/// the channel's slot, not the keys' (`{revoked}`). Receivers take a revocation from its
/// announcement alone, so the two need no order.
#[derive(Default)]
struct Mirror {
    keys: redis::Pipeline,
    announcements: redis::Pipeline,
}

impl Mirror {
    /// A revocation kept until `until`; nothing once `until` has passed.
    fn add(&mut self, denied: Denied, until: i64, now: DateTime<Utc>) {
        let Some(ttl) = u64::try_from(until - now.timestamp())
            .ok()
            .filter(|ttl| *ttl > 0)
        else {
            return;
        };
        let key = match denied {
            Denied::Token(jti) => jti_key(jti),
            Denied::Family(family) => family_key(family),
        };
        self.keys.set_ex(key, 1, ttl).ignore();
        self.announcements
            .publish(denylist::CHANNEL, denylist::message(denied, until))
            .ignore();
    }

    /// Both at once and each whatever becomes of the other: in a cluster the keys' node
    /// may be down while the channel's is up, and every copy subscribed there must still
    /// hear of the revocation.
    async fn send(self, conn: &Connection) -> redis::RedisResult<()> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let (mut keys_conn, mut announce_conn) = (conn.clone(), conn.clone());
        let (keys, announced) = futures::join!(
            self.keys.query_async::<()>(&mut keys_conn),
            self.announcements.query_async::<()>(&mut announce_conn)
        );
        keys.and(announced)
    }
}

/// Copies the revocations made since `since` (minus a margin for clock skew between the
/// database and this process and for slow transactions) into Redis; returns the next
/// `since`. Run by every replica on every probe, so a revocation that its own replica could
/// not mirror reaches Redis within a probe interval through any replica that can.
pub async fn catch_up(
    db: &Pool,
    conn: Connection,
    window: MirrorWindow,
    since: DateTime<Utc>,
) -> anyhow::Result<DateTime<Utc>> {
    let (now, jtis, families): (DateTime<Utc>, Vec<Uuid>, Vec<Uuid>) = sqlx::query_as(
        "SELECT now(),
                ARRAY(SELECT jti FROM revoked_tokens WHERE revoked_at > $1 - interval '5 seconds'),
                ARRAY(SELECT DISTINCT family_id FROM refresh_tokens WHERE revoked_at > $1 - interval '5 seconds')",
    )
    .bind(since)
    .fetch_one(db)
    .await?;
    if jtis.is_empty() && families.is_empty() {
        return Ok(now);
    }
    let expiries: Vec<(Uuid, DateTime<Utc>)> =
        sqlx::query_as("SELECT jti, expires_at FROM revoked_tokens WHERE jti = ANY($1)")
            .bind(&jtis)
            .fetch_all(db)
            .await?;
    let mut mirror = Mirror::default();
    for (jti, expires_at) in expiries {
        mirror.add(Denied::Token(jti), window.jti_until(expires_at), now);
    }
    for family in families {
        mirror.add(Denied::Family(family), window.family_until(now), now);
    }
    mirror.send(&conn).await?;
    Ok(now)
}

/// Copies every revocation that can still matter from PostgreSQL into Redis (run before
/// Redis is trusted again after an outage or a data loss).
pub async fn resync(
    db: &Pool,
    mut conn: Connection,
    window: MirrorWindow,
) -> anyhow::Result<usize> {
    let jtis: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT jti, expires_at FROM revoked_tokens WHERE expires_at > now() - make_interval(secs => $1)",
    )
    .bind(window.leeway.as_secs_f64())
    .fetch_all(db)
    .await?;
    let families: Vec<Uuid> = sqlx::query_scalar(
        "SELECT DISTINCT family_id FROM refresh_tokens WHERE revoked_at > now() - make_interval(secs => $1)",
    )
    .bind(window.family_window().as_secs_f64())
    .fetch_all(db)
    .await?;
    let family_ttl = window.family_ttl();
    let now = Utc::now();
    for chunk in jtis.chunks(500) {
        let mut pipe = redis::pipe();
        for (jti, expires_at) in chunk {
            let ttl = window.jti_ttl(*expires_at, now).unwrap_or(1);
            pipe.set_ex(jti_key(*jti), 1, ttl).ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
    }
    for chunk in families.chunks(500) {
        let mut pipe = redis::pipe();
        for family in chunk {
            pipe.set_ex(family_key(*family), 1, family_ttl).ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
    }
    Ok(jtis.len() + families.len())
}
