//! Input rules for what users may store: the handlers check them, the OpenAPI document
//! states them, and accounts made from a provider's profile follow them. Limits are
//! generous but bounded, so a single request can never store an unbounded amount of data.

pub const USERNAME_RULE: &str = "must be 1-64 characters without whitespace or '/'";
pub const EMAIL_RULE: &str = "is invalid";
pub const PASSWORD_RULE: &str = "must be 8-256 characters";
pub const IMAGE_RULE: &str = "must be an http(s) URL of at most 2048 characters";
pub const PASSWORD_MAX: usize = 256;
pub const BIO_MAX: usize = 4096;
pub const TITLE_MAX: usize = 256;
pub const DESCRIPTION_MAX: usize = 1024;
pub const BODY_MAX: usize = 128 * 1024;
pub const COMMENT_MAX: usize = 16 * 1024;
pub const TAG_MAX: usize = 64;
pub const TAGS_MAX: usize = 20;
pub const USERNAME_MAX: usize = 64;
pub const EMAIL_MAX: usize = 254;
pub const IMAGE_MAX: usize = 2048;
pub const PASSWORD_MIN: usize = 8;
/// The longest search (`GET /api/articles?q=`).
pub const SEARCH_MAX: usize = 256;

// The same rules as ECMA-262 patterns, for the OpenAPI document (`http::openapi` puts them
// on the request schemas). Each accepts a subset of what the checks below accept, so a
// request that satisfies the document is never refused for its shape.
/// Contains something other than whitespace ("can't be blank"), and no NUL (which
/// PostgreSQL cannot store). Rust's whitespace (what `trim` removes) is ECMA's `\s` plus
/// U+0085, so that one is excluded too.
pub const NOT_BLANK_PATTERN: &str = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$";
/// Any text without NUL.
pub const NO_NUL_PATTERN: &str = r"^[^\u0000]*$";

/// Whether `value` can be stored: PostgreSQL text holds every character but NUL.
pub fn storable(value: &str) -> bool {
    !value.contains('\0')
}
pub const USERNAME_PATTERN: &str = r"^[^\s/\u0000-\u001f\u007f-\u009f]{1,64}$";
pub const EMAIL_PATTERN: &str = r"^[^\s@\u0000-\u001f\u007f-\u009f]+@[^\s@.\u0000-\u001f\u007f-\u009f]([^\s@\u0000-\u001f\u007f-\u009f]*\.)+[^\s@.\u0000-\u001f\u007f-\u009f]+$";
pub const IMAGE_PATTERN: &str = r"^( *|https?://.*)$";
pub const TAG_PATTERN: &str = r"^[^\u0000-\u001f\u007f-\u009f]*$";

/// Length limits count characters, as JSON Schema's `maxLength` does.
pub fn within(value: &str, max_chars: usize) -> bool {
    value.len() <= max_chars || value.chars().count() <= max_chars
}

pub fn username(value: &str) -> bool {
    let chars = value.chars().count();
    (1..=USERNAME_MAX).contains(&chars)
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '/' || c.is_control())
}

pub fn email(value: &str) -> bool {
    let Some((local, domain)) = value.rsplit_once('@') else {
        return false;
    };
    within(value, EMAIL_MAX)
        && !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !value.chars().any(|c| c.is_whitespace() || c.is_control())
}

pub fn password(value: &str) -> bool {
    (PASSWORD_MIN..=PASSWORD_MAX).contains(&value.chars().count())
}

pub fn image_url(value: &str) -> bool {
    value.trim().is_empty()
        || (within(value, IMAGE_MAX)
            && (value.starts_with("https://") || value.starts_with("http://")))
}

/// Trims tags, drops empty ones and duplicates, and sorts them (the RealWorld conformance
/// suite expects `tagList` in alphabetical order). Linear in the input, and it stops at the
/// first tag past the limit, so a body of thousands of tags costs no more than 21.
pub fn normalize_tags(tags: Vec<String>) -> Result<Vec<String>, &'static str> {
    let mut out: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for tag in tags {
        let tag = tag.trim();
        if tag.is_empty() || out.contains(tag) {
            continue;
        }
        if tag.chars().count() > TAG_MAX || tag.chars().any(char::is_control) {
            return Err("each tag must be at most 64 characters");
        }
        if out.len() == TAGS_MAX {
            return Err("at most 20 tags");
        }
        out.insert(tag.to_owned());
    }
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert!(
            username("jake")
                && username("Jöhn_Doe.42")
                && !username("")
                && !username("a b")
                && !username("a/b")
        );
        assert!(
            email("jake@jake.jake")
                && !email("jake")
                && !email("@x.y")
                && !email("a@b")
                && !email("a b@c.d")
        );
        assert!(password("12345678") && !password("short"));
        assert_eq!(
            normalize_tags(vec![
                " rust ".into(),
                "".into(),
                "axum".into(),
                "rust".into()
            ])
            .unwrap(),
            ["axum", "rust"]
        );
        assert!(normalize_tags((0..21).map(|i| i.to_string()).collect()).is_err());
        assert_eq!(
            normalize_tags((0..20).map(|i| i.to_string()).collect())
                .unwrap()
                .len(),
            20
        );
    }

    #[test]
    fn the_count_limit_is_checked_before_the_rest_of_the_input_is_examined() {
        // ~40k tags (a 256 KiB body): refused at the 21st distinct one, so the tags after
        // it are never examined (the overlong one at the end is not what is reported).
        let mut many: Vec<String> = (0..40_000).map(|i| format!("t{i}")).collect();
        many.push("x".repeat(1000));
        assert_eq!(normalize_tags(many), Err("at most 20 tags"));
        // Repeats of one tag are one tag.
        let same: Vec<String> = (0..40_000).map(|_| "rust".to_owned()).collect();
        assert_eq!(normalize_tags(same).unwrap(), ["rust"]);
    }
}
