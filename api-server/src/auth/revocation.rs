//! The access-token denylist: authoritative in PostgreSQL, mirrored in Redis with a TTL
//! equal to each token's remaining lifetime. Checks ask Redis first and fall back to
//! PostgreSQL whenever Redis is not trusted (not configured, down, or not yet resynced).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use uuid::Uuid;

use crate::kv::Kv;

fn key(jti: Uuid) -> String {
    format!("stoa:revoked:{jti}")
}

#[derive(Clone)]
pub struct Revocations {
    kv: Option<Arc<Kv>>,
}

impl Revocations {
    pub fn new(kv: Option<Arc<Kv>>) -> Self {
        Revocations { kv }
    }

    pub async fn is_revoked(&self, db: &PgPool, jti: Uuid) -> Result<bool, sqlx::Error> {
        if let Some(kv) = &self.kv {
            let found = kv.run(|mut conn| async move { conn.exists::<_, bool>(key(jti)).await }).await;
            if let Some(found) = found {
                return Ok(found);
            }
        }
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = $1)")
            .bind(jti)
            .fetch_one(db)
            .await
    }

    /// Mirrors a revocation already committed to PostgreSQL. Best effort: if Redis misses
    /// it, the resync on recovery restores it, and checks use PostgreSQL meanwhile.
    pub async fn mirror(&self, jti: Uuid, expires_at: DateTime<Utc>) {
        let ttl = (expires_at - Utc::now()).num_seconds();
        if ttl <= 0 {
            return;
        }
        if let Some(kv) = &self.kv {
            kv.run(|mut conn| async move { conn.set_ex::<_, _, ()>(key(jti), 1, ttl as u64).await }).await;
        }
    }
}

/// Copies every unexpired revocation from PostgreSQL into Redis (run before Redis is
/// trusted again after an outage or a data loss).
pub async fn resync(db: &PgPool, mut conn: ConnectionManager) -> anyhow::Result<usize> {
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT jti, ceil(extract(epoch FROM expires_at - now()))::bigint FROM revoked_tokens WHERE expires_at > now()",
    )
    .fetch_all(db)
    .await?;
    for chunk in rows.chunks(500) {
        let mut pipe = redis::pipe();
        for (jti, ttl) in chunk {
            pipe.set_ex(key(*jti), 1, (*ttl).max(1) as u64).ignore();
        }
        let _: () = pipe.query_async(&mut conn).await?;
    }
    Ok(rows.len())
}
