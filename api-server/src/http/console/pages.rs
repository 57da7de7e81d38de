//! The console's page frame and its error pages. Pages are HTML rendered on the server
//! (maud: checked and escaped at compile time) with one stylesheet and no script at all,
//! under a Content-Security-Policy that allows nothing else.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use crate::error::ApiError;

/// The signed-in admin's bar at the top of a page.
pub struct Header<'a> {
    pub username: &'a str,
    /// The session's CSRF token, for the sign-out form.
    pub csrf: &'a str,
}

/// The console's Content-Security-Policy: its own stylesheet, forms posting to itself,
/// nothing else (no script, no frames, no other origin).
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// A whole page: `title`, the signed-in admin's bar (with "sign out everywhere") when
/// there is one, and `body`.
pub fn page(title: &str, admin: Option<Header<'_>>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Stoa admin" }
                link rel="stylesheet" href="/admin/assets/console.css";
                link rel="icon" href="/admin/assets/icon.svg" type="image/svg+xml";
            }
            body {
                header {
                    a.brand href="/admin" { "Stoa admin" }
                    @if let Some(admin) = &admin {
                        nav aria-label="Console" {
                            a href="/admin" { "Overview" }
                            a href="/admin/users" { "Users" }
                            a href="/admin/articles" { "Articles" }
                            a href="/admin/jobs" { "Jobs" }
                            a href="/admin/events" { "Security events" }
                            a href="/admin/audit" { "Audit log" }
                        }
                        form.signout method="post" action="/admin/logout" {
                            input type="hidden" name="csrf" value=(admin.csrf);
                            span { "Signed in as " strong { (admin.username) } }
                            button type="submit" { "Sign out everywhere" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// Rows per list page.
pub const PAGE: i64 = 50;

/// Keeps the first [`PAGE`] of `rows` (fetched with one more than a page) and says
/// whether there are more.
pub fn one_page<T>(rows: &mut Vec<T>) -> bool {
    let size = usize::try_from(PAGE).unwrap_or(usize::MAX);
    let more = rows.len() > size;
    rows.truncate(size);
    more
}

/// A list's search term: trimmed, and none when blank or longer than `max` bytes.
pub fn search_term(raw: Option<&str>, max: usize) -> Option<&str> {
    raw.map(str::trim)
        .filter(|q| !q.is_empty() && q.len() <= max)
}

/// The address of a list's next page: `path` with the list's filters (those set) and the
/// cursor.
pub fn next_page(path: &str, filters: &[(&str, Option<&str>)], cursor: (&str, &str)) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in filters {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            query.append_pair(name, value);
        }
    }
    query.append_pair(cursor.0, cursor.1);
    format!("{path}?{}", query.finish())
}

/// `s` as a URL component.
pub fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `%…%` for ILIKE, with the pattern characters in `q` matched literally.
pub fn contains_pattern(q: &str) -> String {
    let escaped = q
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// A page answered with `status`.
pub fn respond(status: StatusCode, markup: Markup) -> Response {
    (status, markup).into_response()
}

/// A refusal or failure as a page: what the API would say, in words for a person.
pub fn failure(error: &ApiError) -> Response {
    let status = error.status();
    let message = match error {
        ApiError::InvalidCredentials => "Wrong email or password.",
        ApiError::InvalidCode => "That code is wrong, expired or already used.",
        ApiError::Unauthorized(_) => "That sign-in expired. Start again.",
        ApiError::RateLimited { .. } => "Too many attempts. Wait a few minutes, then try again.",
        ApiError::Unavailable(_) => "A dependency is unavailable. Try again shortly.",
        _ if status.is_server_error() => "Something went wrong on the server. It has been logged.",
        _ => "",
    };
    // Field errors (a refused change, say) read as the API words them: "account is disabled".
    let message = if message.is_empty() {
        error
            .body()
            .iter()
            .flat_map(|(field, messages)| messages.iter().map(move |m| format!("{field} {m}")))
            .collect::<Vec<_>>()
            .join("; ")
    } else {
        message.to_owned()
    };
    if status.is_server_error() {
        tracing::error!(error = %error, "admin console request failed");
    }
    let body = html! {
        p role="alert" { (message) }
        p { a href="/admin" { "Back to the console" } }
    };
    respond(status, page("Not done", None, body))
}

/// A form posted without its session's CSRF token.
pub fn csrf_refused() -> Response {
    tracing::warn!(target: "stoa::security", event = "console_csrf_refused", "admin console form without its CSRF token");
    let body = html! {
        p role="alert" { "This form expired or did not come from the console. Reload the page and try again." }
    };
    respond(StatusCode::FORBIDDEN, page("Refused", None, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_addresses_keep_their_filters_encoded_and_drop_unset_ones() {
        assert_eq!(
            next_page(
                "/admin/users",
                &[("q", Some("50% off")), ("only", Some(""))],
                ("after", "7")
            ),
            "/admin/users?q=50%25+off&after=7"
        );
        assert_eq!(
            next_page("/admin/audit", &[("admin", None)], ("before", "3")),
            "/admin/audit?before=3"
        );
        assert_eq!(search_term(Some("  ja "), 10), Some("ja"));
        assert_eq!(search_term(Some("   "), 10), None);
        assert_eq!(search_term(Some("toolongterm"), 10), None);
    }

    #[test]
    fn a_page_keeps_its_rows_and_says_whether_more_follow() {
        let mut rows: Vec<i64> = (0..=PAGE).collect();
        assert!(one_page(&mut rows));
        assert_eq!(rows.len(), 50);
        let mut few = vec![1, 2];
        assert!(!one_page(&mut few));
        assert_eq!(few, [1, 2]);
    }
}
