//! Error tracking with Sentry (`STOA_SENTRY_DSN`; off when unset). What reaches it:
//!
//! - every 5xx answer, once, from the front door: the status, the method, the route
//!   template, the request id, the release, and for an internal error its description
//!   ([`ErrorDetail`]; a caught handler panic is one);
//! - panics anywhere in the process (the `panic` integration);
//! - ERROR log events outside request handling (background tasks: a rejected key set, a
//!   failing feed), through the tracing integration.
//!
//! Never a token, password, cookie, query string or body: events are rebuilt from an
//! allow-list of fields in `before_send` ([`scrub`]), so whatever an integration or a
//! future change attaches is dropped unless listed there, and breadcrumbs are off.

use std::borrow::Cow;
use std::sync::Arc;

use sentry::protocol::{Event, Exception, Map, Values};

use crate::config::Config;

/// The tags an event may carry.
const ALLOWED_TAGS: [&str; 4] = ["request_id", "route", "method", "status"];
/// The contexts an event may carry (what the host and runtime are).
const ALLOWED_CONTEXTS: [&str; 3] = ["os", "rust", "device"];

/// An internal error's description, put on the 500 response (never sent to the client:
/// a response extension) for the front door to report.
#[derive(Clone)]
pub struct ErrorDetail(pub Arc<str>);

/// Starts the client when a DSN is configured; keep the guard for the life of the process
/// (dropping it flushes what is queued).
pub fn init(config: &Config) -> Option<sentry::ClientInitGuard> {
    let dsn = config.sentry_dsn.as_ref()?;
    let dsn = match dsn.expose().parse::<sentry::types::Dsn>() {
        Ok(dsn) => dsn,
        Err(_) => {
            // Validated at start-up; unreachable unless the parser disagrees.
            tracing::error!("STOA_SENTRY_DSN is not a valid Sentry DSN; error tracking is off");
            return None;
        }
    };
    let mut options = sentry::ClientOptions::new()
        .release(format!("stoa-api@{}", env!("CARGO_PKG_VERSION")))
        .environment(config.sentry_environment.clone())
        .send_default_pii(false)
        .max_breadcrumbs(0)
        .before_breadcrumb(|_| None)
        .before_send(|event| Some(scrub(event)));
    options.dsn = Some(dsn);
    let guard = sentry::init(options);
    tracing::info!(environment = %config.sentry_environment, "error tracking on (Sentry)");
    Some(guard)
}

/// Whether a client is configured (requests pay nothing for Sentry when not).
pub fn enabled() -> bool {
    sentry::Hub::current()
        .client()
        .is_some_and(|client| client.is_enabled())
}

/// Reports a 5xx answer (called by the front door inside the request's hub).
pub fn report_failed_request(
    request_id: &str,
    method: &str,
    route: &str,
    status: u16,
    detail: Option<&ErrorDetail>,
) {
    let mut tags = Map::new();
    tags.insert("request_id".to_owned(), request_id.to_owned());
    tags.insert("route".to_owned(), route.to_owned());
    tags.insert("method".to_owned(), method.to_owned());
    tags.insert("status".to_owned(), status.to_string());
    let description = detail.map_or("(no detail)", |d| &d.0);
    sentry::capture_event(Event {
        level: sentry::Level::Error,
        message: Some(format!("{status} on {method} {route}: {description}")),
        transaction: Some(format!("{method} {route}")),
        // One issue per route and status, whatever the detail says.
        fingerprint: Cow::Owned(vec![
            Cow::Borrowed("{{ default }}"),
            Cow::Owned(route.to_owned()),
            Cow::Owned(status.to_string()),
        ]),
        tags,
        ..Event::default()
    });
}

/// The event as sent: only allow-listed fields survive. No request (URL, query, headers,
/// cookies, body), no user, no extra data, no breadcrumbs, no thread or module lists.
pub fn scrub(event: Event<'static>) -> Event<'static> {
    let tags = event
        .tags
        .into_iter()
        .filter(|(key, _)| ALLOWED_TAGS.contains(&key.as_str()))
        .collect();
    let contexts = event
        .contexts
        .into_iter()
        .filter(|(key, _)| ALLOWED_CONTEXTS.contains(&key.as_str()))
        .collect();
    let exception: Vec<Exception> = event
        .exception
        .values
        .into_iter()
        .map(|e| Exception {
            ty: e.ty,
            value: e.value,
            module: e.module,
            stacktrace: e.stacktrace,
            mechanism: e.mechanism,
            ..Exception::default()
        })
        .collect();
    Event {
        event_id: event.event_id,
        level: event.level,
        fingerprint: event.fingerprint,
        transaction: event.transaction,
        message: event.message,
        logentry: event.logentry,
        logger: event.logger,
        platform: event.platform,
        timestamp: event.timestamp,
        release: event.release,
        environment: event.environment,
        exception: Values::from(exception),
        stacktrace: event.stacktrace,
        tags,
        contexts,
        sdk: event.sdk,
        ..Event::default()
    }
}

/// The tracing integration: ERROR events outside requests become Sentry events; request
/// failures are reported once by the front door instead (so `stoa_api::error` and the
/// access log are left out). No breadcrumb or log layer: nothing else leaves the process.
pub fn tracing_layer() -> BackgroundErrors {
    BackgroundErrors(sentry::integrations::tracing::ErrorLayer::new())
}

/// Sentry's error layer behind the filter above (the formatting subscriber it is added
/// to supports no per-layer filters, so the filter is this wrapper).
pub struct BackgroundErrors(sentry::integrations::tracing::ErrorLayer);

impl<S> tracing_subscriber::Layer<S> for BackgroundErrors
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        context: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let metadata = event.metadata();
        let from_requests =
            metadata.target() == "stoa_api::error" || metadata.target() == "stoa::access";
        if *metadata.level() == tracing::Level::ERROR && !from_requests {
            self.0.on_event(event, context);
        }
    }
}
