//! The OpenAPI document's frame; paths and schemas come from the handlers' annotations.

use utoipa::Modify;
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Stoa API",
        description = "The RealWorld (Conduit) API with Stoa's production extensions. \
            Authenticate with `Authorization: Token <jwt>` or `Authorization: Bearer <jwt>`. \
            Errors are `{\"errors\": {\"<field>\": [\"<message>\"]}}`.",
        license(name = "Apache-2.0"),
    ),
    modifiers(&TokenAuth),
    tags(
        (name = "users", description = "Registration, login, the current user"),
        (name = "profiles", description = "Profiles and following"),
        (name = "articles", description = "Articles, feed and favorites"),
        (name = "comments", description = "Comments on articles"),
        (name = "tags", description = "Tags"),
        (name = "auth", description = "Token verification keys"),
        (name = "operations", description = "Health and readiness"),
    )
)]
struct ApiDoc;

struct TokenAuth;

impl Modify for TokenAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "`Token <jwt>` (RealWorld) or `Bearer <jwt>`",
            ))),
        );
    }
}

pub fn base() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
