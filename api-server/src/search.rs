//! Full-text search over articles: the language their search vectors are kept in.
//!
//! Vectors are kept by a trigger in the language stored in `search_settings`, and
//! queries read the same row (migration `20261126000003_article_search`), so changing it
//! is one transaction that stores the new language and recomputes every vector.

use crate::db::Pool;

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("unknown text search configuration {0:?} (see `SELECT cfgname FROM pg_ts_config`)")]
    UnknownLanguage(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The language searches use now.
pub async fn language(pool: &Pool) -> Result<String, SearchError> {
    Ok(
        sqlx::query_scalar("SELECT language::text FROM search_settings")
            .fetch_one(pool)
            .await?,
    )
}

/// Stores `language` (a PostgreSQL text search configuration, e.g. `english`, `german`,
/// `simple`) and recomputes every article's vector in it; returns how many. Article
/// writes wait meanwhile, so none keeps a vector in the previous language.
pub async fn set_language(pool: &Pool, language: &str) -> Result<u64, SearchError> {
    let mut tx = pool.begin().await?;
    // Not a cast: `$1::regconfig` fails the transaction on an unknown name.
    let known: Option<String> =
        sqlx::query_scalar("SELECT oid::regconfig::text FROM pg_ts_config WHERE cfgname = $1")
            .bind(language)
            .fetch_optional(&mut tx)
            .await?;
    let Some(config) = known else {
        return Err(SearchError::UnknownLanguage(language.to_owned()));
    };
    // Writers that read the old language in the trigger must commit before the rewrite.
    sqlx::query("LOCK TABLE articles IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut tx)
        .await?;
    sqlx::query("UPDATE search_settings SET language = $1::regconfig")
        .bind(&config)
        .execute(&mut tx)
        .await?;
    let rewritten = sqlx::query(
        "UPDATE articles SET search = stoa_search_vector($1::regconfig, title, description, body)",
    )
    .bind(&config)
    .execute(&mut tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(rewritten)
}
