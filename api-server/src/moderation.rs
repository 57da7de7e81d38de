//! Removing content as an admin, from the API or the console: the deletion and its row in
//! the admin audit log (with the reason given) in one transaction.

use uuid::Uuid;

use crate::auth::audit;
use crate::db::Pool;

/// Removes the article `slug` with its comments and favorites; its author, or `None`
/// when there is no such article.
pub async fn remove_article(
    pool: &Pool,
    slug: &str,
    actor: Option<Uuid>,
    reason: Option<&str>,
) -> Result<Option<Uuid>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let author: Option<Uuid> =
        sqlx::query_scalar("DELETE FROM articles WHERE slug = $1 RETURNING author_id")
            .bind(slug)
            .fetch_optional(&mut tx)
            .await?;
    if author.is_some() {
        audit::record(&mut tx, actor, "remove_article", slug, reason).await?;
    }
    tx.commit().await?;
    Ok(author)
}

/// Removes comment `id` of the article `slug`; its author, or `None` when there is no
/// such comment on that article.
pub async fn remove_comment(
    pool: &Pool,
    slug: &str,
    id: i64,
    actor: Option<Uuid>,
    reason: Option<&str>,
) -> Result<Option<Uuid>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let author: Option<Uuid> = sqlx::query_scalar(
        "DELETE FROM comments c USING articles a
         WHERE a.id = c.article_id AND a.slug = $1 AND c.id = $2
         RETURNING c.author_id",
    )
    .bind(slug)
    .bind(id)
    .fetch_optional(&mut tx)
    .await?;
    if author.is_some() {
        audit::record(
            &mut tx,
            actor,
            "remove_comment",
            &format!("{slug}#{id}"),
            reason,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(author)
}
