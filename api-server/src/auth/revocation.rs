//! Revocation of access tokens, by `jti` (logout) or by refresh-token family (logout,
//! reuse detection, password change).
//!
//! PostgreSQL is authoritative (`revoked_tokens`, `refresh_tokens.revoked_at`); Redis
//! mirrors it with TTLs equal to the remaining token lifetime. Checks ask Redis first and
//! fall back to PostgreSQL whenever Redis is not trusted (not configured, down, or not yet
//! resynced after an outage).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use uuid::Uuid;

use crate::kv::Kv;

fn jti_key(jti: Uuid) -> String {
    format!("stoa:revoked:jti:{jti}")
}

fn family_key(family: Uuid) -> String {
    format!("stoa:revoked:fam:{family}")
}

#[derive(Clone)]
pub struct Revocations {
    kv: Option<Arc<Kv>>,
    /// A revoked family must stay denied as long as any of its access tokens can live.
    access_ttl: Duration,
}

impl Revocations {
    pub fn new(kv: Option<Arc<Kv>>, access_ttl: Duration) -> Self {
        Revocations { kv, access_ttl }
    }

    pub async fn is_revoked(
        &self,
        db: &PgPool,
        jti: Uuid,
        family: Option<Uuid>,
    ) -> Result<bool, sqlx::Error> {
        if let Some(kv) = &self.kv {
            let mut keys = vec![jti_key(jti)];
            keys.extend(family.map(family_key));
            let found = kv
                .run(|mut conn| async move { conn.exists::<_, u32>(keys).await })
                .await;
            if let Some(found) = found {
                return Ok(found > 0);
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

    /// Mirrors revocations already committed to PostgreSQL. Best effort: if Redis misses
    /// one, checks use PostgreSQL until the resync on recovery restores it.
    pub async fn mirror(&self, jti: Option<(Uuid, DateTime<Utc>)>, families: &[Uuid]) {
        let Some(kv) = &self.kv else { return };
        let family_ttl = self.access_ttl.as_secs().max(1);
        let families = families.to_vec();
        kv.run(|mut conn| async move {
            let mut pipe = redis::pipe();
            if let Some((jti, expires_at)) = jti {
                let ttl = (expires_at - Utc::now()).num_seconds();
                if ttl > 0 {
                    pipe.set_ex(jti_key(jti), 1, ttl as u64).ignore();
                }
            }
            for family in families {
                pipe.set_ex(family_key(family), 1, family_ttl).ignore();
            }
            pipe.query_async::<()>(&mut conn).await
        })
        .await;
    }
}

/// Copies every revocation that can still matter from PostgreSQL into Redis (run before
/// Redis is trusted again after an outage or a data loss).
pub async fn resync(
    db: &PgPool,
    mut conn: ConnectionManager,
    access_ttl: Duration,
) -> anyhow::Result<usize> {
    let jtis: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT jti, ceil(extract(epoch FROM expires_at - now()))::bigint FROM revoked_tokens WHERE expires_at > now()",
    )
    .fetch_all(db)
    .await?;
    let families: Vec<Uuid> = sqlx::query_scalar(
        "SELECT DISTINCT family_id FROM refresh_tokens WHERE revoked_at > now() - make_interval(secs => $1)",
    )
    .bind(access_ttl.as_secs_f64())
    .fetch_all(db)
    .await?;
    let family_ttl = access_ttl.as_secs().max(1);
    for chunk in jtis.chunks(500) {
        let mut pipe = redis::pipe();
        for (jti, ttl) in chunk {
            pipe.set_ex(jti_key(*jti), 1, (*ttl).max(1) as u64).ignore();
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
