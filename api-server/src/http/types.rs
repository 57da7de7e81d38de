//! Wire types of the RealWorld API. Rows are decoded straight into these (`sqlx::FromRow`)
//! and serialized without intermediate copies.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;

/// RFC 3339 UTC with milliseconds: `2026-01-02T03:04:05.678Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type, ToSchema)]
#[sqlx(transparent)]
#[schema(value_type = String, format = DateTime, example = "2026-01-02T03:04:05.678Z")]
pub struct Timestamp(pub DateTime<Utc>);

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0.format("%Y-%m-%dT%H:%M:%S%.3fZ"))
    }
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct Profile {
    pub username: String,
    pub bio: Option<String>,
    pub image: Option<String>,
    /// Whether the caller follows this user (false for anonymous callers).
    pub following: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProfileResponse {
    pub profile: Profile,
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Article {
    pub slug: String,
    pub title: String,
    pub description: String,
    /// Omitted in list responses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    pub tag_list: Vec<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub favorited: bool,
    pub favorites_count: i32,
    #[sqlx(flatten)]
    pub author: Profile,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ArticleResponse {
    pub article: Article,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArticlesResponse {
    pub articles: Vec<Article>,
    /// Total number of matching articles (not the page length).
    pub articles_count: i64,
    /// After a full page: `?cursor=` for the items after it (absent on a shorter page and
    /// on searches).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Comment {
    pub id: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub body: String,
    #[sqlx(flatten)]
    pub author: Profile,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CommentResponse {
    pub comment: Comment,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommentsResponse {
    /// One page, newest first (`limit`/`offset` as for articles).
    pub comments: Vec<Comment>,
    /// All comments on the article.
    pub comments_count: i64,
    /// After a full page: `?cursor=` for the comments after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TagsResponse {
    pub tags: Vec<String>,
}

/// The current user, with a fresh access token.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub email: String,
    /// JWT access token (`Authorization: Token <token>`).
    pub token: String,
    pub username: String,
    pub bio: Option<String>,
    pub image: Option<String>,
    /// Opaque refresh token (login, register, refresh and password change only); exchange
    /// it at `POST /api/auth/refresh`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserResponse {
    pub user: User,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct NewUser {
    pub username: String,
    pub email: String,
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct NewUserRequest {
    pub user: NewUser,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginUser {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    pub user: LoginUser,
}

/// Fields to change; `bio` and `image` may be set to null to clear them.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateUser {
    #[serde(default, deserialize_with = "not_null")]
    pub email: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    pub username: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    pub password: Option<String>,
    /// Required to change the password or the email (a stolen access token alone must not
    /// take over the account).
    #[serde(default, deserialize_with = "not_null")]
    pub current_password: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub bio: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub image: Option<Option<String>>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateUserRequest {
    pub user: UpdateUser,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewArticle {
    pub title: String,
    pub description: String,
    pub body: String,
    #[serde(default)]
    pub tag_list: Vec<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct NewArticleRequest {
    pub article: NewArticle,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateArticle {
    #[serde(default, deserialize_with = "not_null")]
    pub title: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    pub description: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    pub body: Option<String>,
    /// Replaces the tags when present.
    #[serde(default, deserialize_with = "not_null")]
    pub tag_list: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateArticleRequest {
    pub article: UpdateArticle,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct NewComment {
    pub body: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct NewCommentRequest {
    pub comment: NewComment,
}

/// An optional field that, when sent, must have a value: `null` is refused (422) rather
/// than read as "absent", so the document and the server agree on what a field may hold.
fn not_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_milliseconds_and_z() {
        let t = Timestamp(
            DateTime::parse_from_rfc3339("2026-01-02T03:04:05.678901+00:00")
                .unwrap()
                .into(),
        );
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"2026-01-02T03:04:05.678Z\""
        );
    }

    #[test]
    fn update_user_tells_null_from_absent() {
        let u: UpdateUser = serde_json::from_str(r#"{"bio": null}"#).unwrap();
        assert_eq!(u.bio, Some(None));
        assert_eq!(u.image, None);
    }
}
