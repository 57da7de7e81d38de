//! Slugs: lowercase words joined by `-`, Unicode letters kept (`Привет мир` → `привет-мир`).

use std::future::Future;

use crate::error::ApiResult;

const MAX_CHARS: usize = 96;

pub fn slugify(title: &str) -> String {
    let mut slug = String::with_capacity(title.len());
    let mut chars = 0;
    let mut pending_dash = false;
    for c in title.chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            if pending_dash && !slug.is_empty() {
                slug.push('-');
                chars += 1;
            }
            pending_dash = false;
            slug.push(c);
            chars += 1;
            if chars >= MAX_CHARS {
                break;
            }
        } else {
            pending_dash = true;
        }
    }
    if slug.is_empty() {
        slug.push_str("article");
    }
    slug
}

/// Words that routes under `/api/articles/` already use: an article with this slug could
/// never be read, edited or deleted (`GET /api/articles/feed` is the feed).
const RESERVED: &[&str] = &["feed"];

/// The slug to try first for `base`: itself, or with a suffix if a route uses the word.
fn first_choice(base: &str) -> String {
    if RESERVED.contains(&base) {
        with_suffix(base)
    } else {
        base.to_owned()
    }
}

/// Whether `slug` was made from `base` (itself, or with a collision suffix), so an edit
/// that keeps the title keeps the slug.
pub fn belongs_to(slug: &str, base: &str) -> bool {
    slug == base
        || slug
            .strip_prefix(base)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|suffix| {
                suffix.len() == SUFFIX_LEN
                    && suffix
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            })
}

const SUFFIX_LEN: usize = 6;

/// How many times a slug collision is retried with a fresh random suffix.
const ATTEMPTS: usize = 4;

/// Runs `write` with a slug for `base` until one is free: first choice, then fresh
/// suffixes. `write` answers `Ok(None)` when its slug was taken. Without a base (the slug
/// is not changing) `write` runs once with `None` and cannot collide.
pub async fn claim<T, Fut>(
    base: Option<&str>,
    mut write: impl FnMut(Option<String>) -> Fut,
) -> ApiResult<T>
where
    Fut: Future<Output = ApiResult<Option<T>>>,
{
    let Some(base) = base else {
        return write(None)
            .await?
            .ok_or_else(|| anyhow::anyhow!("slug collision without a new slug").into());
    };
    let mut slug = first_choice(base);
    for _ in 0..ATTEMPTS {
        if let Some(done) = write(Some(slug)).await? {
            return Ok(done);
        }
        slug = with_suffix(base);
    }
    Err(anyhow::anyhow!("could not find a free slug for {base:?}").into())
}

/// `base` plus a random suffix, used when `base` is taken.
fn with_suffix(base: &str) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let suffix: String = (0..SUFFIX_LEN)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{base}-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(
            slugify("How to train your dragon"),
            "how-to-train-your-dragon"
        );
        assert_eq!(slugify("  Hello, World!! "), "hello-world");
        assert_eq!(slugify("Привет мир"), "привет-мир");
        assert_eq!(slugify("日本語のタイトル"), "日本語のタイトル");
        assert_eq!(slugify("🎉🎉"), "article");
        assert_eq!(slugify(&"a".repeat(500)).chars().count(), MAX_CHARS);
        let s = with_suffix("x");
        assert!(s.starts_with("x-") && s.len() == 8);
        assert!(belongs_to(&s, "x") && belongs_to("x", "x"));
        assert!(!belongs_to("x-y", "x") && !belongs_to("xy", "x"));
        assert_ne!(first_choice("feed"), "feed");
        assert_eq!(first_choice("feeds"), "feeds");
    }
}
