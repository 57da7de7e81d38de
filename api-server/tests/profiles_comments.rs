#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
mod common;

use common::{TestApp, errors};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn profiles_show_following_for_the_caller(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let jake = app.register("jake").await;
    app.register("jane").await;
    let anon = app.get("/api/profiles/jane", None).await;
    assert_eq!(anon.status, StatusCode::OK);
    assert_eq!(
        anon.body,
        json!({"profile": {"username": "jane", "bio": null, "image": null, "following": false}})
    );
    assert_eq!(
        app.get("/api/profiles/nobody", None).await.status,
        StatusCode::NOT_FOUND
    );
    // An invalid token on an optional-auth route is still a 401.
    assert_eq!(
        app.get("/api/profiles/jane", Some("bogus")).await.status,
        StatusCode::UNAUTHORIZED
    );

    let followed = app
        .post("/api/profiles/jane/follow", Some(&jake), json!({}))
        .await;
    assert_eq!(followed.body["profile"]["following"], true);
    let again = app
        .post("/api/profiles/jane/follow", Some(&jake), json!({}))
        .await;
    assert_eq!(
        (again.status, again.body["profile"]["following"].as_bool()),
        (StatusCode::OK, Some(true))
    );
    assert_eq!(
        app.get("/api/profiles/jane", Some(&jake)).await.body["profile"]["following"],
        true
    );
    assert_eq!(
        app.get("/api/profiles/jane", None).await.body["profile"]["following"],
        false
    );

    let unfollowed = app.delete("/api/profiles/jane/follow", Some(&jake)).await;
    assert_eq!(unfollowed.body["profile"]["following"], false);
    let again = app.delete("/api/profiles/jane/follow", Some(&jake)).await;
    assert_eq!(
        (again.status, again.body["profile"]["following"].as_bool()),
        (StatusCode::OK, Some(false))
    );
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn following_needs_auth_an_existing_user_and_not_yourself(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let jake = app.register("jake").await;
    assert_eq!(
        app.post("/api/profiles/jake/follow", None, json!({}))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.post("/api/profiles/ghost/follow", Some(&jake), json!({}))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let me = app
        .post("/api/profiles/jake/follow", Some(&jake), json!({}))
        .await;
    assert_eq!(me.status, StatusCode::FORBIDDEN);
    assert!(!errors(&me, "username").is_empty());
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn comments_can_be_added_listed_and_deleted_by_their_author(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let jake = app.register("jake").await;
    let jane = app.register("jane").await;
    let slug = app.article(&jake, "Discuss", &[]).await;
    let path = format!("/api/articles/{slug}/comments");

    assert_eq!(
        app.get(&path, None).await.body,
        json!({"comments": [], "commentsCount": 0})
    );
    let first = app
        .post(&path, Some(&jane), json!({"comment": {"body": "First!"}}))
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(first.body["comment"]["body"], "First!");
    assert_eq!(first.body["comment"]["author"]["username"], "jane");
    let first_id = first.body["comment"]["id"].as_i64().unwrap();
    app.post(&path, Some(&jake), json!({"comment": {"body": "Second"}}))
        .await;

    let list = app.get(&path, Some(&jake)).await;
    let bodies: Vec<&str> = list.body["comments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["Second", "First!"], "newest first");

    let by_other = app.delete(&format!("{path}/{first_id}"), Some(&jake)).await;
    assert_eq!(by_other.status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.delete(&format!("{path}/{first_id}"), Some(&jane))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.delete(&format!("{path}/{first_id}"), Some(&jane))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.delete(&format!("{path}/not-a-number"), Some(&jane))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get(&path, None).await.body["comments"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn comments_validate_and_need_an_existing_article(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let jake = app.register("jake").await;
    let slug = app.article(&jake, "Discuss", &[]).await;
    let blank = app
        .post(
            &format!("/api/articles/{slug}/comments"),
            Some(&jake),
            json!({"comment": {"body": "  "}}),
        )
        .await;
    assert_eq!(blank.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(errors(&blank, "body"), ["can't be blank"]);
    assert_eq!(
        app.get("/api/articles/missing/comments", None).await.status,
        StatusCode::NOT_FOUND
    );
    let missing = app
        .post(
            "/api/articles/missing/comments",
            Some(&jake),
            json!({"comment": {"body": "hi"}}),
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let anon = app
        .post(
            &format!("/api/articles/{slug}/comments"),
            None,
            json!({"comment": {"body": "hi"}}),
        )
        .await;
    assert_eq!(anon.status, StatusCode::UNAUTHORIZED);
    // A comment id from another article is not found on this one.
    let other = app.article(&jake, "Other", &[]).await;
    let c = app
        .post(
            &format!("/api/articles/{other}/comments"),
            Some(&jake),
            json!({"comment": {"body": "x"}}),
        )
        .await;
    let id = c.body["comment"]["id"].as_i64().unwrap();
    assert_eq!(
        app.delete(&format!("/api/articles/{slug}/comments/{id}"), Some(&jake))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn comments_come_in_pages(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let jake = app.register("jake").await;
    let slug = app.article(&jake, "Popular", &[]).await;
    let path = format!("/api/articles/{slug}/comments");
    for i in 0..25 {
        let res = app
            .post(
                &path,
                Some(&jake),
                json!({"comment": {"body": format!("comment {i}")}}),
            )
            .await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    }
    // Default page: the 20 newest, and the total.
    let first = app.get(&path, None).await;
    assert_eq!(first.body["comments"].as_array().unwrap().len(), 20);
    assert_eq!(first.body["comments"][0]["body"], "comment 24");
    assert_eq!(first.body["commentsCount"], 25);
    let rest = app.get(&format!("{path}?limit=20&offset=20"), None).await;
    let bodies: Vec<&str> = rest.body["comments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["body"].as_str().unwrap())
        .collect();
    assert_eq!(
        bodies,
        [
            "comment 4",
            "comment 3",
            "comment 2",
            "comment 1",
            "comment 0"
        ]
    );
    // Past the end: an empty page, not a 404; the limit is capped; bad values are 422.
    let past = app.get(&format!("{path}?offset=100"), None).await;
    assert_eq!(past.status, StatusCode::OK);
    assert_eq!(past.body["comments"], json!([]));
    assert_eq!(past.body["commentsCount"], 25);
    let capped = app.get(&format!("{path}?limit=1000"), None).await;
    assert_eq!(capped.body["comments"].as_array().unwrap().len(), 25);
    let bad = app.get(&format!("{path}?offset=-1"), None).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        app.get("/api/articles/missing/comments?offset=100", None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}
