#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
mod common;

use common::{TestApp, errors};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn create_returns_the_full_article(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let token = app.register("jake").await;
    let res = app
        .post(
            "/api/articles",
            Some(&token),
            json!({"article": {"title": "How to train your dragon", "description": "Ever wonder how?",
                   "body": "You have to believe", "tagList": ["reactjs", "angularjs", "dragons", "reactjs", " "]}}),
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text);
    let a = &res.body["article"];
    assert_eq!(a["slug"], "how-to-train-your-dragon");
    assert_eq!(a["body"], "You have to believe");
    // Author's order kept, duplicates and blanks dropped.
    // Alphabetical, as the RealWorld conformance suite expects.
    assert_eq!(a["tagList"], json!(["angularjs", "dragons", "reactjs"]));
    assert_eq!(a["favorited"], false);
    assert_eq!(a["favoritesCount"], 0);
    assert_eq!(
        a["author"],
        json!({"username": "jake", "bio": null, "image": null, "following": false})
    );
    let created = a["createdAt"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.len() == 24, "{created}");

    let fetched = app
        .get("/api/articles/how-to-train-your-dragon", None)
        .await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(fetched.body["article"], res.body["article"]);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn same_titles_get_distinct_slugs_and_unicode_titles_work(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let token = app.register("jake").await;
    let first = app.article(&token, "Same title", &[]).await;
    let second = app.article(&token, "Same title", &[]).await;
    assert_eq!(first, "same-title");
    assert_ne!(first, second);
    assert!(second.starts_with("same-title-"));

    let slug = app
        .article(&token, "Привет, мир! 日本語", &["ünïcödé"])
        .await;
    assert_eq!(slug, "привет-мир-日本語");
    let encoded: String = url_escape(&slug);
    let res = app.get(&format!("/api/articles/{encoded}"), None).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.body["article"]["title"], "Привет, мир! 日本語");
    let by_tag = app
        .get(
            &format!("/api/articles?tag={}", url_escape("ünïcödé")),
            None,
        )
        .await;
    assert_eq!(by_tag.body["articlesCount"], 1);
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn create_validates_input_and_requires_auth(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let token = app.register("jake").await;
    let res = app
        .post(
            "/api/articles",
            Some(&token),
            json!({"article": {"title": " ", "description": "", "body": ""}}),
        )
        .await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(errors(&res, "title"), ["can't be blank"]);
    assert_eq!(errors(&res, "description"), ["can't be blank"]);
    assert_eq!(errors(&res, "body"), ["can't be blank"]);
    let anon = app
        .post(
            "/api/articles",
            None,
            json!({"article": {"title": "t", "description": "d", "body": "b"}}),
        )
        .await;
    assert_eq!(anon.status, StatusCode::UNAUTHORIZED);
    let many_tags: Vec<String> = (0..21).map(|i| format!("t{i}")).collect();
    let res = app
        .post("/api/articles", Some(&token), json!({"article": {"title": "t", "description": "d", "body": "b", "tagList": many_tags}}))
        .await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!errors(&res, "tagList").is_empty());
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn only_the_author_may_update_or_delete(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let jake = app.register("jake").await;
    let jane = app.register("jane").await;
    let slug = app.article(&jake, "Original title", &["a"]).await;

    let forbidden = app
        .put(
            &format!("/api/articles/{slug}"),
            Some(&jane),
            json!({"article": {"body": "hijacked"}}),
        )
        .await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.delete(&format!("/api/articles/{slug}"), Some(&jane))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.delete(&format!("/api/articles/{slug}"), None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let body: String = sqlx::query_scalar("SELECT body FROM articles")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(body, "the body");

    // Body-only change keeps the slug; a title change moves it.
    let res = app
        .put(
            &format!("/api/articles/{slug}"),
            Some(&jake),
            json!({"article": {"body": "new body"}}),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(res.body["article"]["slug"], slug);
    assert_eq!(res.body["article"]["body"], "new body");
    let res = app
        .put(
            &format!("/api/articles/{slug}"),
            Some(&jake),
            json!({"article": {"title": "A new title"}}),
        )
        .await;
    assert_eq!(res.body["article"]["slug"], "a-new-title");
    assert_ne!(
        res.body["article"]["updatedAt"],
        res.body["article"]["createdAt"]
    );
    assert_eq!(
        app.get(&format!("/api/articles/{slug}"), None).await.status,
        StatusCode::NOT_FOUND
    );

    assert_eq!(
        app.put(
            "/api/articles/a-new-title",
            Some(&jake),
            json!({"article": {}})
        )
        .await
        .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        app.put(
            "/api/articles/missing",
            Some(&jake),
            json!({"article": {"body": "x"}})
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );

    assert_eq!(
        app.delete("/api/articles/a-new-title", Some(&jake))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get("/api/articles/a-new-title", None).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.delete("/api/articles/a-new-title", Some(&jake))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn title_change_onto_a_taken_slug_gets_a_unique_one(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let jake = app.register("jake").await;
    app.article(&jake, "Taken", &[]).await;
    let slug = app.article(&jake, "Other", &[]).await;
    let res = app
        .put(
            &format!("/api/articles/{slug}"),
            Some(&jake),
            json!({"article": {"title": "Taken"}}),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    let new_slug = res.body["article"]["slug"].as_str().unwrap();
    assert!(new_slug.starts_with("taken-"), "{new_slug}");
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn list_filters_combine_and_paginate_newest_first(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let jake = app.register("jake").await;
    let jane = app.register("jane").await;
    for i in 0..5 {
        app.article(
            &jake,
            &format!("Jake {i}"),
            &["rust", if i % 2 == 0 { "even" } else { "odd" }],
        )
        .await;
    }
    for i in 0..3 {
        app.article(&jane, &format!("Jane {i}"), &["rust"]).await;
    }
    app.post("/api/articles/jake-0/favorite", Some(&jane), json!({}))
        .await;
    app.post("/api/articles/jake-2/favorite", Some(&jane), json!({}))
        .await;
    app.post("/api/articles/jane-1/favorite", Some(&jane), json!({}))
        .await;

    let all = app.get("/api/articles", None).await;
    assert_eq!(all.body["articlesCount"], 8);
    let slugs: Vec<&str> = all.body["articles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs[0], "jane-2", "newest first");
    assert_eq!(slugs[7], "jake-0");
    assert!(
        all.body["articles"][0].get("body").is_none(),
        "lists omit the body"
    );

    let page = app.get("/api/articles?limit=3&offset=2", None).await;
    let page_slugs: Vec<&str> = page.body["articles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["slug"].as_str().unwrap())
        .collect();
    assert_eq!(page_slugs, slugs[2..5]);
    assert_eq!(
        page.body["articlesCount"], 8,
        "the total, not the page length"
    );

    let past_end = app.get("/api/articles?offset=50", None).await;
    assert_eq!(past_end.body, json!({"articles": [], "articlesCount": 8}));

    assert_eq!(
        app.get("/api/articles?author=jake", None).await.body["articlesCount"],
        5
    );
    assert_eq!(
        app.get("/api/articles?tag=even", None).await.body["articlesCount"],
        3
    );
    assert_eq!(
        app.get("/api/articles?tag=even&author=jake", None)
            .await
            .body["articlesCount"],
        3
    );
    assert_eq!(
        app.get("/api/articles?tag=even&author=jane", None)
            .await
            .body["articlesCount"],
        0
    );
    assert_eq!(
        app.get("/api/articles?favorited=jane", None).await.body["articlesCount"],
        3
    );
    let combined = app
        .get("/api/articles?favorited=jane&author=jake&tag=even", None)
        .await;
    assert_eq!(combined.body["articlesCount"], 2);
    assert_eq!(
        app.get("/api/articles?author=nobody", None).await.body["articlesCount"],
        0
    );

    // Caller-specific flags come with the list.
    let as_jane = app
        .get("/api/articles?author=jake&limit=100", Some(&jane))
        .await;
    let favorited: Vec<bool> = as_jane.body["articles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["favorited"].as_bool().unwrap())
        .collect();
    assert_eq!(favorited, [false, false, true, false, true]);

    assert_eq!(
        app.get("/api/articles?limit=0", None).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        app.get("/api/articles?offset=-1", None).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        app.get("/api/articles?limit=abc", None).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        app.get("/api/articles?limit=1000", None).await.body["articles"]
            .as_array()
            .unwrap()
            .len(),
        8
    );
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn feed_shows_followed_authors_only(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let jake = app.register("jake").await;
    let jane = app.register("jane").await;
    let bob = app.register("bob").await;
    app.article(&jane, "From jane", &[]).await;
    app.article(&bob, "From bob", &[]).await;
    app.article(&jake, "From jake", &[]).await;

    let empty = app.get("/api/articles/feed", Some(&jake)).await;
    assert_eq!(empty.body, json!({"articles": [], "articlesCount": 0}));
    app.post("/api/profiles/jane/follow", Some(&jake), json!({}))
        .await;
    let feed = app.get("/api/articles/feed", Some(&jake)).await;
    assert_eq!(feed.body["articlesCount"], 1);
    assert_eq!(feed.body["articles"][0]["slug"], "from-jane");
    assert_eq!(feed.body["articles"][0]["author"]["following"], true);
    assert_eq!(
        app.get("/api/articles/feed", None).await.status,
        StatusCode::UNAUTHORIZED
    );

    // The count is the total over every followed author, whatever the page.
    app.article(&jane, "Jane again", &[]).await;
    app.article(&bob, "Bob again", &[]).await;
    app.post("/api/profiles/bob/follow", Some(&jake), json!({}))
        .await;
    let page = app
        .get("/api/articles/feed?limit=1&offset=1", Some(&jake))
        .await;
    assert_eq!(page.body["articlesCount"], 4, "{}", page.text);
    assert_eq!(page.body["articles"].as_array().unwrap().len(), 1);
    assert_eq!(page.body["articles"][0]["slug"], "jane-again");
    let past_end = app.get("/api/articles/feed?offset=10", Some(&jake)).await;
    assert_eq!(past_end.body, json!({"articles": [], "articlesCount": 4}));
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn favorites_are_idempotent_and_counted(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let jake = app.register("jake").await;
    let jane = app.register("jane").await;
    let bob = app.register("bob").await;
    let slug = app.article(&jake, "Popular", &[]).await;
    let path = format!("/api/articles/{slug}/favorite");

    let res = app.post(&path, Some(&jane), json!({})).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(
        (
            res.body["article"]["favorited"].as_bool(),
            res.body["article"]["favoritesCount"].as_i64()
        ),
        (Some(true), Some(1))
    );
    let again = app.post(&path, Some(&jane), json!({})).await;
    assert_eq!(again.body["article"]["favoritesCount"], 1);
    let bobs = app.post(&path, Some(&bob), json!({})).await;
    assert_eq!(bobs.body["article"]["favoritesCount"], 2);

    let removed = app.delete(&path, Some(&jane)).await;
    assert_eq!(
        (
            removed.body["article"]["favorited"].as_bool(),
            removed.body["article"]["favoritesCount"].as_i64()
        ),
        (Some(false), Some(1))
    );
    let removed_again = app.delete(&path, Some(&jane)).await;
    assert_eq!(removed_again.body["article"]["favoritesCount"], 1);

    assert_eq!(
        app.post("/api/articles/missing/favorite", Some(&jane), json!({}))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.post(&path, None, json!({})).await.status,
        StatusCode::UNAUTHORIZED
    );
    let seen_by_bob = app.get(&format!("/api/articles/{slug}"), Some(&bob)).await;
    assert_eq!(seen_by_bob.body["article"]["favorited"], true);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn concurrent_favorites_keep_an_exact_count(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let author = app.register("author").await;
    let slug = app.article(&author, "Race", &[]).await;
    let mut tokens = Vec::new();
    for i in 0..10 {
        tokens.push(app.register(&format!("fan{i}")).await);
    }
    let path = format!("/api/articles/{slug}/favorite");
    let calls = tokens
        .iter()
        .flat_map(|t| [t, t])
        .map(|t| app.post(&path, Some(t), json!({})));
    for res in futures::future::join_all(calls).await {
        assert_eq!(res.status, StatusCode::OK);
    }
    let article = app.get(&format!("/api/articles/{slug}"), None).await;
    assert_eq!(article.body["article"]["favoritesCount"], 10);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn deleting_an_article_removes_its_comments_and_favorites(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let jake = app.register("jake").await;
    let slug = app.article(&jake, "Doomed", &[]).await;
    app.post(
        &format!("/api/articles/{slug}/comments"),
        Some(&jake),
        json!({"comment": {"body": "hi"}}),
    )
    .await;
    app.post(
        &format!("/api/articles/{slug}/favorite"),
        Some(&jake),
        json!({}),
    )
    .await;
    assert_eq!(
        app.delete(&format!("/api/articles/{slug}"), Some(&jake))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let leftovers: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM comments) + (SELECT count(*) FROM favorites)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(leftovers, 0);
    // The maintained total follows deletes.
    assert_eq!(
        app.get("/api/articles", None).await.body["articlesCount"],
        0
    );
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn tags_list_distinct_tags_most_used_first(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    assert_eq!(app.get("/api/tags", None).await.body, json!({"tags": []}));
    let jake = app.register("jake").await;
    app.article(&jake, "One", &["rust", "web"]).await;
    app.article(&jake, "Two", &["rust"]).await;
    assert_eq!(
        app.get("/api/tags", None).await.body,
        json!({"tags": ["rust", "web"]})
    );
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn slugs_never_shadow_routes_and_stay_stable_across_edits(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let token = app.register("jake").await;
    let new = |title: &str| json!({"article": {"title": title, "description": "d", "body": "b"}});
    // "Feed" would be /api/articles/feed, which is the feed.
    let feed = app.post("/api/articles", Some(&token), new("Feed")).await;
    assert_eq!(feed.status, StatusCode::CREATED, "{}", feed.text);
    let slug = feed.body["article"]["slug"].as_str().unwrap().to_owned();
    assert_ne!(slug, "feed");
    let read = app.get(&format!("/api/articles/{slug}"), None).await;
    assert_eq!(read.body["article"]["title"], "Feed");

    // A second "Dragons" gets a suffixed slug, which edits that keep the title keep.
    app.post("/api/articles", Some(&token), new("Dragons"))
        .await;
    let second = app
        .post("/api/articles", Some(&token), new("Dragons"))
        .await;
    let suffixed = second.body["article"]["slug"].as_str().unwrap().to_owned();
    assert_ne!(suffixed, "dragons");
    for body in ["edited once", "edited twice"] {
        let edited = app
            .put(
                &format!("/api/articles/{suffixed}"),
                Some(&token),
                json!({"article": {"title": "Dragons", "body": body}}),
            )
            .await;
        assert_eq!(edited.status, StatusCode::OK, "{}", edited.text);
        assert_eq!(edited.body["article"]["slug"], suffixed.as_str());
    }
    // Renaming the feed article to "Feed" again also keeps it off the route word.
    let renamed = app
        .put(
            &format!("/api/articles/{slug}"),
            Some(&token),
            json!({"article": {"title": "Feed"}}),
        )
        .await;
    assert_eq!(renamed.body["article"]["slug"], slug.as_str());
}

/// The tag list follows every way an article's tags change: created, edited, deleted, and
/// written by plain SQL (the counts are kept by the database, not by the handlers).
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn tags_follow_every_change_to_articles(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let jake = app.register("jake").await;
    let one = app.article(&jake, "One", &["rust", "web"]).await;
    let two = app.article(&jake, "Two", &["web", "zig"]).await;
    let tags = || async { app.get("/api/tags", None).await.body["tags"].clone() };
    assert_eq!(tags().await, json!(["web", "rust", "zig"]));

    let edited = app
        .put(
            &format!("/api/articles/{one}"),
            Some(&jake),
            json!({"article": {"tagList": ["zig", "go"]}}),
        )
        .await;
    assert_eq!(edited.status, StatusCode::OK, "{}", edited.text);
    assert_eq!(tags().await, json!(["zig", "go", "web"]));

    app.delete(&format!("/api/articles/{two}"), Some(&jake))
        .await;
    assert_eq!(tags().await, json!(["go", "zig"]));

    sqlx::query("UPDATE articles SET tag_list = ARRAY['go', 'go', 'ada']")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(tags().await, json!(["ada", "go"]));
    let recount: Vec<(String, i64)> = sqlx::query_as(
        "SELECT t, count(*) FROM articles, LATERAL (SELECT DISTINCT t FROM unnest(tag_list) t) u
          GROUP BY t ORDER BY t",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let kept: Vec<(String, i64)> = sqlx::query_as(
        "SELECT tag, articles::bigint FROM tag_counts WHERE articles <> 0 ORDER BY tag",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(kept, recount);
}

async fn post_article(
    app: &TestApp,
    token: &str,
    title: &str,
    description: &str,
    body: &str,
    tags: &[&str],
) -> String {
    let res = app
        .post(
            "/api/articles",
            Some(token),
            json!({"article": {"title": title, "description": description, "body": body, "tagList": tags}}),
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text);
    res.body["article"]["slug"].as_str().unwrap().to_owned()
}

fn titles(res: &common::Response) -> Vec<&str> {
    res.body["articles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["title"].as_str().unwrap())
        .collect()
}

/// `?q=` searches title, description and body with stemming, best matches first (a title
/// match outranks a body match, whatever their age), combines with the other filters,
/// counts only matches, follows edits, and refuses blank or oversized searches.
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn articles_can_be_searched_by_relevance_and_combined_with_filters(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let jake = app.register("jake").await;
    let jane = app.register("jane").await;
    post_article(
        &app,
        &jake,
        "Gardening",
        "soil",
        "Ownership of a garden explained",
        &["life"],
    )
    .await;
    post_article(
        &app,
        &jane,
        "Ownership in Rust",
        "borrowing",
        "lifetimes",
        &["rust"],
    )
    .await;
    let unrelated = post_article(&app, &jake, "Cooking", "pasta", "boil water", &["life"]).await;
    post_article(
        &app,
        &jane,
        "Owners",
        "who owns what",
        "property",
        &["rust"],
    )
    .await;

    let found = app.get("/api/articles?q=ownership", None).await;
    assert_eq!(found.status, StatusCode::OK, "{}", found.text);
    // Newest is "Owners" ("owner" stems differently from "ownership"), then the body match.
    assert_eq!(titles(&found), ["Ownership in Rust", "Gardening"]);
    assert_eq!(found.body["articlesCount"], 2);
    // Stemming: "explaining" finds "explained".
    assert_eq!(
        titles(&app.get("/api/articles?q=explaining", None).await),
        ["Gardening"]
    );
    // Web search syntax, and every other filter.
    assert_eq!(
        titles(&app.get("/api/articles?q=ownership%20-rust", None).await),
        ["Gardening"]
    );
    assert_eq!(
        titles(&app.get("/api/articles?q=ownership&tag=life", None).await),
        ["Gardening"]
    );
    assert_eq!(
        titles(&app.get("/api/articles?q=ownership&author=jane", None).await),
        ["Ownership in Rust"]
    );
    let later = app
        .get("/api/articles?q=ownership&limit=1&offset=1", None)
        .await;
    assert_eq!(titles(&later), ["Gardening"]);
    assert_eq!(later.body["articlesCount"], 2);
    let past_end = app.get("/api/articles?q=ownership&offset=5", None).await;
    assert_eq!(titles(&past_end), Vec::<&str>::new());
    assert_eq!(past_end.body["articlesCount"], 2);
    // Signed in, with the caller's flags.
    let signed_in = app.get("/api/articles?q=ownership", Some(&jake)).await;
    assert_eq!(titles(&signed_in), ["Ownership in Rust", "Gardening"]);
    // Edits are searchable at once.
    let edited = app
        .put(
            &format!("/api/articles/{unrelated}"),
            Some(&jake),
            json!({"article": {"body": "ownership of pots"}}),
        )
        .await;
    assert_eq!(edited.status, StatusCode::OK, "{}", edited.text);
    assert_eq!(
        app.get("/api/articles?q=ownership", None).await.body["articlesCount"],
        3
    );
    // Nothing matches: an empty page, not an error.
    let none = app.get("/api/articles?q=zeppelin", None).await;
    assert_eq!(none.status, StatusCode::OK);
    assert_eq!(none.body["articlesCount"], 0);

    for bad in ["%20%20", &"x".repeat(257)] {
        let refused = app.get(&format!("/api/articles?q={bad}"), None).await;
        assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert!(!errors(&refused, "q").is_empty());
    }
}

/// The search language is a database setting (`stoa-api search-language`): changing it
/// recomputes every vector, so stemming follows at once; an unknown language is refused
/// and changes nothing.
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn the_search_language_can_be_changed_and_every_article_follows(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let jake = app.register("jake").await;
    post_article(&app, &jake, "Running", "fast", "runs daily", &[]).await;
    assert_eq!(stoa_api::search::language(&pool).await.unwrap(), "english");
    assert_eq!(
        app.get("/api/articles?q=run", None).await.body["articlesCount"],
        1
    );

    assert_eq!(
        stoa_api::search::set_language(&pool, "simple")
            .await
            .unwrap(),
        1
    );
    // `simple` does not stem: "run" is no longer "running" or "runs".
    assert_eq!(
        app.get("/api/articles?q=run", None).await.body["articlesCount"],
        0
    );
    assert_eq!(
        app.get("/api/articles?q=running", None).await.body["articlesCount"],
        1
    );
    // New articles use it too.
    post_article(&app, &jake, "Runner", "x", "y", &[]).await;
    assert_eq!(
        app.get("/api/articles?q=run", None).await.body["articlesCount"],
        0
    );

    let refused = stoa_api::search::set_language(&pool, "klingon").await;
    assert!(matches!(
        refused,
        Err(stoa_api::search::SearchError::UnknownLanguage(_))
    ));
    assert_eq!(stoa_api::search::language(&pool).await.unwrap(), "simple");
}
