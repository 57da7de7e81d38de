//! Slugs: lowercase words joined by `-`, Unicode letters kept (`Привет мир` → `привет-мир`).

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

/// `base` plus a random suffix, used when `base` is taken.
pub fn with_suffix(base: &str) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let suffix: String = (0..6)
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
    }
}
