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
            Errors are `{\"errors\": {\"<field>\": [\"<message>\"]}}`. \
            Every path also accepts one trailing slash (`POST /api/articles/` is \
            `POST /api/articles`): the same operation answers, without a redirect.",
        license(name = "Apache-2.0"),
    ),
    modifiers(&TokenAuth),
    tags(
        (name = "users", description = "Registration, login, the current user"),
        (name = "profiles", description = "Profiles and following"),
        (name = "articles", description = "Articles, feed and favorites"),
        (name = "comments", description = "Comments on articles"),
        (name = "tags", description = "Tags"),
        (name = "admin", description = "Administration: callers whose token carries the admin role (`stoa-api admin grant`)"),
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

/// What a string property accepts.
struct Rule {
    min: Option<usize>,
    max: usize,
    pattern: Option<&'static str>,
}

const fn rule(min: Option<usize>, max: usize, pattern: Option<&'static str>) -> Rule {
    Rule { min, max, pattern }
}

/// The request schemas' constraints, from the same constants and patterns the handlers
/// validate with (`crate::validate`), so the document says what the server enforces.
fn input_rules() -> Vec<(&'static str, &'static str, Rule)> {
    use crate::validate::*;
    let username = rule(Some(1), USERNAME_MAX, Some(USERNAME_PATTERN));
    let email = || rule(Some(3), EMAIL_MAX, Some(EMAIL_PATTERN));
    let new_password = || rule(Some(PASSWORD_MIN), PASSWORD_MAX, None);
    let not_blank = |max| rule(Some(1), max, Some(NOT_BLANK_PATTERN));
    vec![
        ("NewUser", "username", username),
        ("NewUser", "email", email()),
        ("NewUser", "password", new_password()),
        ("LoginUser", "email", not_blank(EMAIL_MAX)),
        ("LoginUser", "password", rule(Some(1), PASSWORD_MAX, None)),
        (
            "UpdateUser",
            "username",
            rule(Some(1), USERNAME_MAX, Some(USERNAME_PATTERN)),
        ),
        ("UpdateUser", "email", email()),
        ("UpdateUser", "password", new_password()),
        (
            "UpdateUser",
            "currentPassword",
            rule(None, PASSWORD_MAX, None),
        ),
        (
            "UpdateUser",
            "bio",
            rule(None, BIO_MAX, Some(NO_NUL_PATTERN)),
        ),
        (
            "UpdateUser",
            "image",
            rule(None, IMAGE_MAX, Some(IMAGE_PATTERN)),
        ),
        ("NewArticle", "title", not_blank(TITLE_MAX)),
        ("NewArticle", "description", not_blank(DESCRIPTION_MAX)),
        ("NewArticle", "body", not_blank(BODY_MAX)),
        ("UpdateArticle", "title", not_blank(TITLE_MAX)),
        ("UpdateArticle", "description", not_blank(DESCRIPTION_MAX)),
        ("UpdateArticle", "body", not_blank(BODY_MAX)),
        ("NewComment", "body", not_blank(COMMENT_MAX)),
    ]
}

struct InputRules;

impl Modify for InputRules {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::schema::{ArrayItems, Schema, SchemaType, Type};
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        for (schema, property, rule) in input_rules() {
            let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(schema) else {
                continue;
            };
            if let Some(RefOr::T(Schema::Object(field))) = object.properties.get_mut(property) {
                // `null` means "absent" for these fields (only `bio` and `image` clear).
                if !matches!(property, "bio" | "image") {
                    field.schema_type = SchemaType::Type(Type::String);
                }
                field.min_length = rule.min;
                field.max_length = Some(rule.max);
                field.pattern = rule.pattern.map(str::to_owned);
            }
        }
        // Updates must change something; tag lists are bounded and tags have no controls.
        for schema in ["UpdateUser", "UpdateArticle"] {
            if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(schema) {
                object.min_properties = Some(1);
            }
        }
        for schema in ["NewArticle", "UpdateArticle"] {
            let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(schema) else {
                continue;
            };
            if let Some(RefOr::T(Schema::Array(tags))) = object.properties.get_mut("tagList") {
                tags.schema_type = SchemaType::Type(Type::Array);
                tags.max_items = Some(crate::validate::TAGS_MAX);
                if let ArrayItems::RefOrSchema(item) = &mut tags.items
                    && let RefOr::T(Schema::Object(tag)) = item.as_mut()
                {
                    tag.max_length = Some(crate::validate::TAG_MAX);
                    tag.pattern = Some(crate::validate::TAG_PATTERN.to_owned());
                }
            }
        }
    }
}

/// Statuses any API operation can answer besides its own: 401 for a bad token (even where
/// signing in is optional), 413 for a body over the limit, 422 for a malformed body or
/// query, 429 for the rate limits. And every path or query string parameter is text
/// without NUL (the server refuses NUL there before any handler runs).
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{Schema, SchemaType, Type};
        use utoipa::openapi::{RefOr, ResponseBuilder};
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/api/") || path == "/api/openapi.json" {
                continue;
            }
            let operations = [
                item.get.as_mut(),
                item.put.as_mut(),
                item.post.as_mut(),
                item.delete.as_mut(),
            ];
            for operation in operations.into_iter().flatten() {
                for parameter in operation.parameters.iter_mut().flatten() {
                    let RefOr::T(parameter) = parameter else {
                        continue;
                    };
                    if let Some(RefOr::T(Schema::Object(schema))) = parameter.schema.as_mut()
                        && matches!(&schema.schema_type, SchemaType::Type(Type::String))
                    {
                        use crate::validate::{NO_NUL_PATTERN, NOT_BLANK_PATTERN, SEARCH_MAX};
                        // A search must not be blank (the handler's rule).
                        if path == "/api/articles" && parameter.name == "q" {
                            schema.min_length = Some(1);
                            schema.max_length = Some(SEARCH_MAX);
                            schema.pattern = Some(NOT_BLANK_PATTERN.to_owned());
                        } else {
                            schema.pattern = Some(NO_NUL_PATTERN.to_owned());
                        }
                    }
                }
                if operation.request_body.is_some() {
                    operation
                        .responses
                        .responses
                        .entry("413".to_owned())
                        .or_insert_with(|| {
                            ResponseBuilder::new()
                                .description("body over `STOA_BODY_LIMIT_BYTES`")
                                .build()
                                .into()
                        });
                }
                let responses = &mut operation.responses.responses;
                let common = [
                    ("401", "missing, malformed, expired or revoked token"),
                    ("422", "invalid body, path or query (`{\"errors\": {...}}`)"),
                    ("429", "rate limited (`Retry-After`, `RateLimit-*` headers)"),
                ];
                for (status, description) in common {
                    responses.entry(status.to_owned()).or_insert_with(|| {
                        ResponseBuilder::new()
                            .description(description)
                            .build()
                            .into()
                    });
                }
            }
        }
    }
}

/// The operations that issue or spend a refresh token take `X-Stoa-Session: cookie` to
/// keep it in the session cookie (`crate::http::session_cookie`).
struct SessionCookieMode;

impl Modify for SessionCookieMode {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::ResponseBuilder;
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let operations = [
            ("/api/users", "post"),
            ("/api/users/login", "post"),
            ("/api/users/login/mfa", "post"),
            ("/api/user", "put"),
            ("/api/auth/refresh", "post"),
            ("/api/auth/logout", "post"),
        ];
        for (path, method) in operations {
            let Some(item) = openapi.paths.paths.get_mut(path) else {
                continue;
            };
            let operation = match method {
                "post" => item.post.as_mut(),
                _ => item.put.as_mut(),
            };
            let Some(operation) = operation else { continue };
            let parameter = ParameterBuilder::new()
                .name(crate::http::session_cookie::MODE_HEADER.as_str())
                .parameter_in(ParameterIn::Header)
                .description(Some(
                    "`cookie`: the refresh token travels in the `HttpOnly` session cookie \
                     (`__Secure-stoa-refresh`, path `/api/auth`) instead of the body; on \
                     refresh, the cookie is read only with this header, from an allowed origin.",
                ))
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .enum_values(Some(["cookie"])),
                ))
                .build();
            operation
                .parameters
                .get_or_insert_with(Vec::new)
                .push(parameter.into());
            if path == "/api/auth/refresh" {
                operation.responses.responses.insert(
                    "403".to_owned(),
                    ResponseBuilder::new()
                        .description(
                            "cookie mode from an origin that may not use the session cookie",
                        )
                        .build()
                        .into(),
                );
            }
        }
    }
}

/// Completes the document once every route's paths and schemas are in it.
pub fn finish(openapi: &mut utoipa::openapi::OpenApi) {
    InputRules.modify(openapi);
    SessionCookieMode.modify(openapi);
    CommonResponses.modify(openapi);
}

pub fn base() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
