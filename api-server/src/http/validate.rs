//! Input rules shared by the handlers. Limits are generous but bounded, so a single
//! request can never store an unbounded amount of data.

pub const USERNAME_RULE: &str = "must be 1-64 characters without whitespace or '/'";
pub const EMAIL_RULE: &str = "is invalid";
pub const PASSWORD_RULE: &str = "must be 8-256 characters";
pub const IMAGE_RULE: &str = "must be an http(s) URL of at most 2048 bytes";
pub const PASSWORD_MAX: usize = 256;
pub const BIO_MAX: usize = 4096;
pub const TITLE_MAX: usize = 256;
pub const DESCRIPTION_MAX: usize = 1024;
pub const BODY_MAX: usize = 128 * 1024;
pub const COMMENT_MAX: usize = 16 * 1024;
pub const TAG_MAX: usize = 64;
pub const TAGS_MAX: usize = 20;

pub fn username(value: &str) -> bool {
    let chars = value.chars().count();
    (1..=64).contains(&chars)
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '/' || c.is_control())
}

pub fn email(value: &str) -> bool {
    let Some((local, domain)) = value.rsplit_once('@') else {
        return false;
    };
    value.len() <= 254
        && !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !value.chars().any(|c| c.is_whitespace() || c.is_control())
}

pub fn password(value: &str) -> bool {
    let chars = value.chars().count();
    (8..=PASSWORD_MAX).contains(&chars) && value.len() <= 4 * PASSWORD_MAX
}

pub fn image_url(value: &str) -> bool {
    value.trim().is_empty()
        || (value.len() <= 2048 && (value.starts_with("https://") || value.starts_with("http://")))
}

/// Trims tags, drops empty ones and duplicates (keeping the author's order).
pub fn normalize_tags(tags: Vec<String>) -> Result<Vec<String>, &'static str> {
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for tag in tags {
        let tag = tag.trim();
        if tag.is_empty() || out.iter().any(|t| t == tag) {
            continue;
        }
        if tag.chars().count() > TAG_MAX || tag.chars().any(char::is_control) {
            return Err("each tag must be at most 64 characters");
        }
        out.push(tag.to_owned());
    }
    if out.len() > TAGS_MAX {
        return Err("at most 20 tags");
    }
    Ok(out)
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
            ["rust", "axum"]
        );
        assert!(normalize_tags((0..21).map(|i| i.to_string()).collect()).is_err());
    }
}
