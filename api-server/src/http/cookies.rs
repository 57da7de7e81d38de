//! Cookies the server sets and reads: the refresh-token cookie (`session_cookie`), a
//! provider sign-in's flow cookie (`oauth`), the admin console's (`console::session`).

use axum::http::{HeaderMap, HeaderValue, header};
use cookie::{Cookie, SameSite};
use subtle::ConstantTimeEq;

/// The value of cookie `name` in the request, if any (parsed by the `cookie` crate).
pub fn value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|cookie| cookie.name() == name)
        .and_then(|cookie| cookie.value_raw())
}

/// `Set-Cookie` for a cookie page scripts cannot read (`HttpOnly`), sent only over https
/// (`Secure`) and only to `path`; `None` as `max_age` deletes it.
pub fn set(
    name: &str,
    value: &str,
    path: &str,
    same_site: SameSite,
    max_age: Option<std::time::Duration>,
) -> HeaderValue {
    let max_age = max_age.map_or(cookie::time::Duration::ZERO, |age| {
        cookie::time::Duration::seconds(i64::try_from(age.as_secs()).unwrap_or(i64::MAX))
    });
    let cookie = Cookie::build((name, value))
        .path(path)
        .http_only(true)
        .secure(true)
        .same_site(same_site)
        .max_age(max_age)
        .build();
    // Our cookies hold URL-safe base64 tokens: always a valid header value.
    HeaderValue::from_str(&cookie.to_string()).unwrap_or(HeaderValue::from_static(""))
}

/// Whether two secrets are equal, in time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_cookie_among_others_and_compares_exactly() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, "a=1; b=two".parse().unwrap());
        headers.append(header::COOKIE, "c=3".parse().unwrap());
        assert_eq!(value(&headers, "b"), Some("two"));
        assert_eq!(value(&headers, "c"), Some("3"));
        assert_eq!(value(&headers, "d"), None);
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret!"));
    }

    #[test]
    fn cookies_are_http_only_secure_scoped_and_deleted_with_no_age() {
        let set = set(
            "n",
            "v",
            "/p",
            SameSite::Strict,
            Some(std::time::Duration::from_secs(60)),
        );
        let set = set.to_str().unwrap();
        for part in [
            "n=v",
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Path=/p",
            "Max-Age=60",
        ] {
            assert!(set.contains(part), "{set}");
        }
        let gone = super::set("n", "", "/p", SameSite::Lax, None);
        assert!(gone.to_str().unwrap().contains("Max-Age=0"));
    }
}
