//! What each kind of job does. A handler gets the job's transaction: everything it writes
//! commits with the job's completion, or not at all.

use std::time::Duration;

use sqlx::types::Uuid;

use crate::db::Tx;

use crate::auth::revocation::MirrorWindow;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Build an account's data export (`POST /api/user/export`).
    ExportAccount,
    /// Delete expired refresh tokens, revocations, sign-in challenges and old finished jobs.
    PurgeExpired,
    /// Check the derived counters against what they count, and repair any drift.
    RecountCounters,
}

impl Kind {
    pub const ALL: [Kind; 3] = [
        Kind::ExportAccount,
        Kind::PurgeExpired,
        Kind::RecountCounters,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ExportAccount => "export_account",
            Kind::PurgeExpired => "purge_expired",
            Kind::RecountCounters => "recount_counters",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("malformed payload: {0}")]
    Payload(#[from] serde_json::Error),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// What handlers need besides the transaction.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    pub mirror: MirrorWindow,
    /// Finished jobs older than this are deleted by the purge.
    pub retention: Duration,
    /// Stored security events older than this are deleted by the purge.
    pub security_event_retention: Duration,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportPayload {
    pub user_id: Uuid,
}

/// Runs one job in `tx`; the returned JSON is logged with the job's completion.
pub async fn run(
    tx: &mut Tx,
    kind: Kind,
    payload: &serde_json::Value,
    context: Context,
) -> Result<serde_json::Value, JobError> {
    match kind {
        Kind::ExportAccount => {
            let ExportPayload { user_id } = serde_json::from_value(payload.clone())?;
            let written = export_account(tx, user_id).await?;
            Ok(serde_json::json!({ "written": written }))
        }
        Kind::PurgeExpired => {
            let purged = crate::auth::retention::purge_expired(tx, context.mirror).await?;
            let jobs = purge_finished_jobs(tx, context.retention).await?;
            let security_events =
                purge_security_events(tx, context.security_event_retention).await?;
            Ok(serde_json::json!({
                "refreshTokens": purged.refresh_tokens,
                "revocations": purged.revocations,
                "mfaChallenges": purged.mfa_challenges,
                "signInFlows": purged.sign_in_flows,
                "consoleSessions": purged.console_sessions,
                "jobs": jobs,
                "securityEvents": security_events,
            }))
        }
        Kind::RecountCounters => {
            let repaired = recount_counters(tx).await?;
            Ok(serde_json::json!(repaired))
        }
    }
}

/// Writes the account's export document: profile, articles, comments, favorites and
/// follows, built in one statement. Nothing to do when the account (and so its export
/// request) is gone.
async fn export_account(tx: &mut Tx, user_id: Uuid) -> Result<bool, sqlx::Error> {
    let written = sqlx::query(
        "UPDATE account_exports e SET ready_at = now(), revision = e.revision + 1, document = (
            SELECT jsonb_build_object(
                'exportedAt', now(),
                'user', jsonb_build_object('username', u.username, 'email', u.email,
                    'bio', u.bio, 'image', u.image, 'createdAt', u.created_at),
                'articles', COALESCE((SELECT jsonb_agg(jsonb_build_object('slug', a.slug,
                    'title', a.title, 'description', a.description, 'body', a.body,
                    'tagList', to_jsonb(a.tag_list), 'createdAt', a.created_at,
                    'updatedAt', a.updated_at) ORDER BY a.created_at, a.id)
                    FROM articles a WHERE a.author_id = u.id), '[]'),
                'comments', COALESCE((SELECT jsonb_agg(jsonb_build_object('article', a.slug,
                    'body', c.body, 'createdAt', c.created_at) ORDER BY c.created_at, c.id)
                    FROM comments c JOIN articles a ON a.id = c.article_id
                    WHERE c.author_id = u.id), '[]'),
                'favorites', COALESCE((SELECT jsonb_agg(a.slug ORDER BY f.created_at, a.id)
                    FROM favorites f JOIN articles a ON a.id = f.article_id
                    WHERE f.user_id = u.id), '[]'),
                'following', COALESCE((SELECT jsonb_agg(v.username ORDER BY f.created_at, v.username)
                    FROM follows f JOIN users v ON v.id = f.followed_id
                    WHERE f.follower_id = u.id), '[]'),
                'identities', COALESCE((SELECT jsonb_agg(jsonb_build_object('provider', i.provider,
                    'subject', i.subject, 'email', i.email, 'linkedAt', i.linked_at,
                    'lastUsedAt', i.last_used_at) ORDER BY i.linked_at, i.provider)
                    FROM user_identities i WHERE i.user_id = u.id), '[]'))
            FROM users u WHERE u.id = e.user_id)
         WHERE e.user_id = $1",
    )
    .bind(user_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(written > 0)
}

async fn purge_security_events(tx: &mut Tx, retention: Duration) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM security_events WHERE at < now() - make_interval(secs => $1)")
            .bind(retention.as_secs_f64())
            .execute(&mut *tx)
            .await?
            .rows_affected(),
    )
}

async fn purge_finished_jobs(tx: &mut Tx, retention: Duration) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM jobs WHERE state = 'done' AND finished_at < now() - make_interval(secs => $1)",
    )
    .bind(retention.as_secs_f64())
    .execute(&mut *tx)
    .await?
    .rows_affected())
}

/// Counters repaired by one recount.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Repaired {
    pub favorites_counts: u64,
    pub tag_counts: u64,
    pub article_count: u64,
    pub author_counts: u64,
    /// `article_tags` entries added or removed.
    pub tag_entries: u64,
}

/// Triggers keep `articles.favorites_count`, `tag_counts`, the article count's shards,
/// `author_article_counts` and `article_tags` exact; this proves it and repairs what a bug or a manual edit
/// broke. Each count is compared under a SHARE lock on the table it counts: writers wait
/// (briefly) instead of committing between the count and the repair, which would make the
/// repair itself wrong.
/// It stays whole (over ~80 lines): one lock, then one check-and-repair statement per
/// counter, in the order the locks allow; split, the lock would no longer be visibly held.
pub async fn recount_counters(tx: &mut Tx) -> Result<Repaired, sqlx::Error> {
    sqlx::query("LOCK TABLE favorites, articles IN SHARE MODE")
        .execute(&mut *tx)
        .await?;
    let favorites_counts = sqlx::query(
        "UPDATE articles a SET favorites_count = f.n
           FROM (SELECT a.id, count(f.article_id)::int AS n
                   FROM articles a LEFT JOIN favorites f ON f.article_id = a.id
                  GROUP BY a.id) f
          WHERE a.id = f.id AND a.favorites_count <> f.n",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let tag_counts = sqlx::query(
        "WITH actual AS (
             SELECT t AS tag, count(*)::int AS n
               FROM articles, LATERAL (SELECT DISTINCT t FROM unnest(tag_list) t) u
              GROUP BY t),
         wanted AS (
             SELECT c.tag, COALESCE(actual.n, 0) AS n
               FROM tag_counts c LEFT JOIN actual USING (tag)
             UNION ALL
             SELECT actual.tag, actual.n FROM actual
              WHERE NOT EXISTS (SELECT 1 FROM tag_counts c WHERE c.tag = actual.tag))
         INSERT INTO tag_counts AS c (tag, articles)
         SELECT tag, n FROM wanted ORDER BY tag
         ON CONFLICT (tag) DO UPDATE SET articles = EXCLUDED.articles
          WHERE c.articles <> EXCLUDED.articles",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    // The article count's shards that sum to the wrong count: all of it goes to shard 0.
    let article_count: i64 = sqlx::query_scalar(
        "WITH repaired AS (
             UPDATE article_count_shards
                SET articles = CASE WHEN shard = 0 THEN (SELECT count(*) FROM articles) ELSE 0 END
              WHERE (SELECT sum(articles) FROM article_count_shards)
                    <> (SELECT count(*) FROM articles)
             RETURNING 1)
         SELECT LEAST(count(*), 1) FROM repaired",
    )
    .fetch_one(&mut *tx)
    .await?;
    let author_counts = sqlx::query(
        "WITH actual AS (
             SELECT author_id, count(*) AS n FROM articles GROUP BY author_id),
         wanted AS (
             SELECT c.author_id, COALESCE(actual.n, 0) AS n
               FROM author_article_counts c LEFT JOIN actual USING (author_id)
             UNION ALL
             SELECT actual.author_id, actual.n FROM actual
              WHERE NOT EXISTS (SELECT 1 FROM author_article_counts c WHERE c.author_id = actual.author_id))
         INSERT INTO author_article_counts AS c (author_id, articles)
         SELECT author_id, n FROM wanted ORDER BY author_id
         ON CONFLICT (author_id) DO UPDATE SET articles = EXCLUDED.articles
          WHERE c.articles <> EXCLUDED.articles",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    // Both sides read the statement's snapshot: an entry is either stale (removed) or
    // missing (added), never both.
    let tag_entries: i64 = sqlx::query_scalar(
        "WITH actual AS (
             SELECT DISTINCT t AS tag, a.created_at, a.id AS article_id
               FROM articles a, unnest(a.tag_list) t),
         stale AS (
             DELETE FROM article_tags e
              WHERE NOT EXISTS (SELECT 1 FROM actual
                                 WHERE (actual.tag, actual.created_at, actual.article_id)
                                     = (e.tag, e.created_at, e.article_id))
             RETURNING 1),
         missing AS (
             INSERT INTO article_tags (tag, created_at, article_id)
             SELECT tag, created_at, article_id FROM actual
              WHERE NOT EXISTS (SELECT 1 FROM article_tags e
                                 WHERE (actual.tag, actual.created_at, actual.article_id)
                                     = (e.tag, e.created_at, e.article_id))
             RETURNING 1)
         SELECT (SELECT count(*) FROM stale) + (SELECT count(*) FROM missing)",
    )
    .fetch_one(&mut *tx)
    .await?;
    Ok(Repaired {
        favorites_counts,
        tag_counts,
        article_count: article_count.unsigned_abs(),
        author_counts,
        tag_entries: tag_entries.unsigned_abs(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(Kind::parse("send_spam"), None);
    }
}
