//! Browser sessions: the refresh token in a cookie instead of the response body, opted
//! into per request with `X-Stoa-Session: cookie`. The access token stays in the body (a
//! browser app keeps it in memory); the refresh token never reaches page scripts.
//!
//! The cookie is `HttpOnly` (scripts cannot read it), `Secure`, `SameSite=Strict` (a
//! browser sends it only on same-site requests) and scoped to `/api/auth`, the refresh
//! and logout routes, so no other request carries it. Those routes use it only when the
//! request also carries `X-Stoa-Session: cookie`, a custom header that a page of another
//! origin cannot send without a CORS preflight this server answers only for
//! `STOA_CORS_ALLOWED_ORIGINS` (OWASP CSRF cheat sheet, "custom request headers"), and
//! only when its `Origin`, if any, is such an origin or the server's own host
//! ("verifying origin with standard headers"). Body mode is unchanged and works beside
//! it: a request without the header never reads or sets the cookie.

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use cookie::SameSite;

use crate::config::HttpConfig;
use crate::error::ApiError;
use crate::http::cookies;

pub const MODE_HEADER: HeaderName = HeaderName::from_static("x-stoa-session");
/// `__Secure-`: browsers accept the cookie only with `Secure`, from a secure origin.
pub const COOKIE_NAME: &str = "__Secure-stoa-refresh";
pub const COOKIE_PATH: &str = "/api/auth";

/// Where a sign-in, refresh or logout delivers (or reads) the refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Body,
    Cookie,
}

impl Delivery {
    /// The mode the request asks for; any value other than `cookie` is a 422, so a
    /// typo cannot silently fall back to the body.
    pub fn of(headers: &HeaderMap) -> Result<Delivery, ApiError> {
        match headers.get(MODE_HEADER) {
            None => Ok(Delivery::Body),
            Some(value) if value.as_bytes().eq_ignore_ascii_case(b"cookie") => Ok(Delivery::Cookie),
            Some(_) => Err(ApiError::field("X-Stoa-Session", "must be `cookie`")),
        }
    }
}

/// The refresh token in the request's cookie, for a cookie-mode request from an allowed
/// origin; `None` without one.
pub fn presented(headers: &HeaderMap, http: &HttpConfig) -> Result<Option<String>, ApiError> {
    check_origin(headers, http)?;
    Ok(crate::http::cookies::value(headers, COOKIE_NAME).map(str::to_owned))
}

/// A cross-origin request must come from an origin listed by name in the CORS list (`*`
/// does not count: it never allows credentials) or from the API's own origin, compared
/// whole (scheme, host and port): the configured public URL, or without one the
/// request's own host over https (http only for a loopback host, as in development).
fn check_origin(headers: &HeaderMap, http: &HttpConfig) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        // Not sent by browsers on some same-origin requests; the custom header, which a
        // cross-origin page can send only after a preflight, still stands.
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    let listed = http.cors_allowed_origins.iter().any(|o| o == origin);
    let own = match &http.public_origin {
        Some(public) => origin.eq_ignore_ascii_case(&public.origin),
        None => headers
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
            .is_some_and(|host| {
                let loopback = ["localhost", "127.0.0.1", "[::1]"]
                    .iter()
                    .any(|h| host == *h || host.starts_with(&format!("{h}:")));
                origin.eq_ignore_ascii_case(&format!("https://{host}"))
                    || (loopback && origin.eq_ignore_ascii_case(&format!("http://{host}")))
            }),
    };
    if listed || own {
        Ok(())
    } else {
        Err(ApiError::forbidden_field(
            "Origin",
            "may not use the session cookie",
        ))
    }
}

/// `Set-Cookie` for a refresh token that expires in `max_age`.
pub fn set(token: &str, max_age: std::time::Duration) -> HeaderValue {
    cookies::set(
        COOKIE_NAME,
        token,
        COOKIE_PATH,
        SameSite::Strict,
        Some(max_age),
    )
}

/// `Set-Cookie` that deletes the cookie (logout, or a refused cookie token).
pub fn clear() -> HeaderValue {
    cookies::set(COOKIE_NAME, "", COOKIE_PATH, SameSite::Strict, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cookie::Cookie;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn the_cookie_is_http_only_secure_strict_and_scoped_to_the_auth_routes() {
        let value = set("abc", std::time::Duration::from_secs(7 * 86400));
        let value = value.to_str().unwrap();
        for part in [
            "__Secure-stoa-refresh=abc",
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Path=/api/auth",
            "Max-Age=604800",
        ] {
            assert!(value.contains(part), "{value} lacks {part}");
        }
        let cleared = clear();
        let cleared = Cookie::parse(cleared.to_str().unwrap()).unwrap();
        assert_eq!(cleared.name(), COOKIE_NAME);
        assert_eq!(cleared.max_age(), Some(cookie::time::Duration::ZERO));
    }

    /// The HTTP settings with `STOA_CORS_ALLOWED_ORIGINS` and, if given, `STOA_PUBLIC_URL`.
    fn http(origins: &str, public_url: Option<&str>) -> HttpConfig {
        let mut vars = vec![("STOA_CORS_ALLOWED_ORIGINS".to_owned(), origins.to_owned())];
        if let Some(url) = public_url {
            vars.push(("STOA_PUBLIC_URL".to_owned(), url.to_owned()));
        }
        let env = crate::config::Env::new(move |k| {
            vars.iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
        });
        crate::config::Config::from_env(&env, true).unwrap().http
    }

    #[test]
    fn the_cookie_is_read_only_from_allowed_origins() {
        let allowed = http("https://app.example", None);
        let cookie = "theme=dark; __Secure-stoa-refresh=tok";
        let same_host = headers(&[
            ("cookie", cookie),
            ("host", "api.example"),
            ("origin", "https://api.example"),
        ]);
        assert_eq!(
            presented(&same_host, &allowed).unwrap().as_deref(),
            Some("tok")
        );
        let listed = headers(&[("cookie", cookie), ("origin", "https://app.example")]);
        assert_eq!(
            presented(&listed, &allowed).unwrap().as_deref(),
            Some("tok")
        );
        let foreign = headers(&[("cookie", cookie), ("origin", "https://evil.example")]);
        assert!(presented(&foreign, &allowed).is_err());
        assert!(presented(&foreign, &http("*", None)).is_err());
        assert_eq!(presented(&headers(&[]), &allowed).unwrap(), None);
    }

    /// The API's own origin is compared whole: the same host over plain http (a page an
    /// active attacker on the network can serve) is another origin.
    #[test]
    fn the_own_origin_is_compared_by_scheme_host_and_port() {
        let cookie = "__Secure-stoa-refresh=tok";
        let from = |origin: &'static str, host: &'static str| {
            headers(&[("cookie", cookie), ("host", host), ("origin", origin)])
        };
        let no_public_url = http("", None);
        assert!(presented(&from("http://api.example", "api.example"), &no_public_url).is_err());
        assert!(presented(&from("https://api.example", "api.example"), &no_public_url).is_ok());
        // Development: plain http on a loopback host.
        assert!(
            presented(
                &from("http://localhost:8080", "localhost:8080"),
                &no_public_url
            )
            .is_ok()
        );

        let public = http("", Some("https://API.example:443/"));
        assert!(presented(&from("https://api.example", "internal:8080"), &public).is_ok());
        for wrong in [
            "http://api.example",
            "https://api.example:8443",
            "https://api.example.evil",
        ] {
            assert!(
                presented(&from(wrong, "api.example"), &public).is_err(),
                "{wrong}"
            );
        }
    }

    #[test]
    fn the_mode_is_body_unless_cookie_is_asked_for_exactly() {
        assert_eq!(Delivery::of(&headers(&[])).unwrap(), Delivery::Body);
        assert_eq!(
            Delivery::of(&headers(&[("x-stoa-session", "Cookie")])).unwrap(),
            Delivery::Cookie
        );
        assert!(Delivery::of(&headers(&[("x-stoa-session", "cookies")])).is_err());
    }
}
