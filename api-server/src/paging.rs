//! Page sizes for every list (articles, feed, comments), and the cache keys built on them.

pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageError {
    /// `limit` below 1.
    Limit,
    /// A negative `offset`.
    Offset,
}

/// `(limit, offset)`: `limit` defaults to 20 and is capped at 100; `offset` defaults to 0.
pub fn resolve(limit: Option<i64>, offset: Option<i64>) -> Result<(i64, i64), PageError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    let offset = offset.unwrap_or(0);
    if limit < 1 {
        return Err(PageError::Limit);
    }
    if offset < 0 {
        return Err(PageError::Offset);
    }
    Ok((limit.min(MAX_LIMIT), offset))
}
