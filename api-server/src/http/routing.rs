//! One route table, read two ways: the served router, made at start-up from each handler's
//! path and methods alone, and the OpenAPI document, made from the same table when it is
//! first asked for.
//!
//! utoipa-axum's `routes!` builds a route and its description together, so a server that
//! registered its routes through it built the whole document at start-up and kept it:
//! idle RSS was 18.0 MiB, and is 15.9 MiB without (docs/benchmarks.md, "Memory budget").
//! Each `#[utoipa::path]` handler stays the one source of its path and methods for both
//! readers; a test requests every documented operation from the served router.

use axum::Router;
use axum::handler::Handler;
use axum::http::{HeaderValue, header};
use axum::routing::MethodRouter;
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa_axum::PathItemExt;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

use crate::state::AppState;

/// The handlers of one path, as [`api_routes!`] gathers them.
pub struct Routes {
    /// Adds them to a served router: paths and methods only.
    pub served: fn(Router<AppState>) -> Router<AppState>,
    /// Them with their OpenAPI description (utoipa-axum's `routes!`).
    pub documented: fn() -> UtoipaMethodRouter<AppState>,
}

/// What a module's `router()` builds: the served [`Router`] or the documented
/// [`OpenApiRouter`], from the same calls.
pub trait RouteTable: Sized {
    fn empty() -> Self;
    fn routes(self, routes: Routes) -> Self;
    fn merge(self, other: Self) -> Self;
    /// Answers carry `Cache-Control: no-store`: responses that carry tokens must never be
    /// stored by a browser or a shared cache.
    fn no_store(self) -> Self;
}

fn no_store_layer() -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::overriding(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))
}

impl RouteTable for Router<AppState> {
    fn empty() -> Self {
        Router::new()
    }
    fn routes(self, routes: Routes) -> Self {
        (routes.served)(self)
    }
    fn merge(self, other: Self) -> Self {
        Router::merge(self, other)
    }
    fn no_store(self) -> Self {
        self.layer(no_store_layer())
    }
}

impl RouteTable for OpenApiRouter<AppState> {
    fn empty() -> Self {
        OpenApiRouter::new()
    }
    fn routes(self, routes: Routes) -> Self {
        OpenApiRouter::routes(self, (routes.documented)())
    }
    fn merge(self, other: Self) -> Self {
        OpenApiRouter::merge(self, other)
    }
    fn no_store(self) -> Self {
        self.layer(no_store_layer())
    }
}

/// Routes `handler` at the path and methods its `#[utoipa::path]` declares (`P`, the
/// type that attribute generates), without its description.
pub fn serve<P, H, T>(router: Router<AppState>, handler: H) -> Router<AppState>
where
    P: utoipa::Path,
    H: Handler<T, AppState>,
    T: 'static,
{
    let methods = P::methods()
        .iter()
        .fold(MethodRouter::new(), |methods, method| {
            methods.on(method.to_method_filter(), handler.clone())
        });
    let path = P::path();
    router.route(if path.is_empty() { "/" } else { &path }, methods)
}

/// The type `#[utoipa::path]` generates for a handler: `listing::list_articles` →
/// `listing::__path_list_articles`.
#[macro_export]
#[doc(hidden)]
macro_rules! __utoipa_path_type {
    ([$($prefix:ident)*] $last:ident) => {
        ::pastey::paste! { $($prefix::)* [<__path_ $last>] }
    };
    ([$($prefix:ident)*] $first:ident :: $($rest:ident)::+) => {
        $crate::__utoipa_path_type!([$($prefix)* $first] $($rest)::+)
    };
}

/// The handlers of one path (each annotated with `#[utoipa::path]`), for
/// [`RouteTable::routes`]: `api_routes!(listing::list_articles, create_article)`.
#[macro_export]
macro_rules! api_routes {
    ($($($segment:ident)::+),+ $(,)?) => {
        $crate::http::routing::Routes {
            served: |router| {
                $(
                    let router = $crate::http::routing::serve::<
                        $crate::__utoipa_path_type!([] $($segment)::+), _, _,
                    >(router, $($segment)::+);
                )+
                router
            },
            documented: || ::utoipa_axum::routes!($($($segment)::+),+),
        }
    };
}
