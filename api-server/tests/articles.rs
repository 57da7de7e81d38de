#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
mod common;

use common::{TestApp, db, errors};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::{Connection, PgPool};

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

    // A tag's list total is the same count.
    let app = &app;
    let tagged = |tag: &'static str| async move {
        app.get(&format!("/api/articles?tag={tag}"), None)
            .await
            .body["articlesCount"]
            .clone()
    };
    assert_eq!(tagged("go").await, 1);
    assert_eq!(tagged("web").await, 0);
    // And its articles, newest first.
    let listed = |tag: &'static str| async move {
        let res = app.get(&format!("/api/articles?tag={tag}"), None).await;
        res.body["articles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["slug"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(listed("zig").await, [one.as_str()]);
    assert_eq!(listed("web").await, [] as [&str; 0]);
    assert_eq!(listed("rust").await, [] as [&str; 0]);

    sqlx::query("UPDATE articles SET tag_list = ARRAY['go', 'go', 'ada']")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(tags().await, json!(["ada", "go"]));
    assert_eq!(tagged("go").await, 1);
    assert_eq!(tagged("zig").await, 0);
    assert_eq!(listed("go").await, [one.as_str()], "listed once");
    assert_eq!(listed("zig").await, [] as [&str; 0]);
    // A newer article comes first, until the older one is moved ahead of it.
    let three = app.article(&jake, "Three", &["go"]).await;
    assert_eq!(listed("go").await, [three.as_str(), one.as_str()]);
    sqlx::query("UPDATE articles SET created_at = now() + interval '1 hour' WHERE slug = $1")
        .bind(&one)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(listed("go").await, [one.as_str(), three.as_str()]);
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

/// Writers on many connections at once (each counting into its backend's shard, creating
/// and deleting) leave the article count, the author's and every tag's count exact.
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn counts_stay_exact_under_concurrent_writers(pool: PgPool) {
    let author: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO users (username, email, password_hash) VALUES ('w', 'w@example.com', 'x')
         RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let inserted = std::sync::Arc::new(tokio::sync::Barrier::new(8));
    let writers = (0..8).map(|w| {
        let (pool, inserted) = (pool.clone(), inserted.clone());
        tokio::spawn(async move {
            // Its own connection for the whole run (one backend, so one shard), outside the
            // test pool, which may hold fewer than 8.
            let mut conn = sqlx::postgres::PgConnection::connect_with(&pool.connect_options())
                .await
                .unwrap();
            for i in 0..40 {
                let tags = if i % 2 == 0 {
                    vec!["hot", "even"]
                } else {
                    vec!["hot"]
                };
                sqlx::query(
                    "INSERT INTO articles (slug, author_id, title, description, body, tag_list)
                     VALUES ($1, $2, 't', 'd', 'b', $3)",
                )
                .bind(format!("w{w}-{i}"))
                .bind(author)
                .bind(&tags)
                .execute(&mut conn)
                .await
                .unwrap();
            }
            // Delete some another writer created (once all have): counted out of a shard
            // that never counted them in.
            inserted.wait().await;
            sqlx::query("DELETE FROM articles WHERE slug LIKE $1 AND slug LIKE '%0'")
                .bind(format!("w{}-%", (w + 1) % 8))
                .execute(&mut conn)
                .await
                .unwrap();
        })
    });
    for writer in futures::future::join_all(writers).await {
        writer.unwrap();
    }
    let (articles, kept, authored): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM articles), (SELECT article_count FROM article_stats),
                (SELECT articles FROM author_article_counts WHERE author_id = $1)",
    )
    .bind(author)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((articles, kept, authored), (8 * 36, 8 * 36, 8 * 36));
    let tags: Vec<(String, i64)> =
        sqlx::query_as("SELECT tag, articles::bigint FROM tag_counts ORDER BY tag")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        tags,
        [("even".to_owned(), 8 * 16), ("hot".to_owned(), 8 * 36)]
    );
}

/// Writes of every shape a writer may send in SQL (one article or several per statement, by
/// several authors, with repeated tags or none; edits of tags, text and creation time;
/// deletes one by one and by an author's removal) leave every counter and index entry
/// as the recount computes them, and every search vector as `stoa_search_vector` does.
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn every_kind_of_article_write_keeps_counters_entries_and_vectors_exact(pool: PgPool) {
    let mut authors = Vec::new();
    for name in ["ann", "bob", "cid"] {
        let id: uuid::Uuid = sqlx::query_scalar(
            "INSERT INTO users (username, email, password_hash) VALUES ($1, $1 || '@example.com', 'x')
             RETURNING id",
        )
        .bind(name)
        .fetch_one(&pool)
        .await
        .unwrap();
        authors.push(id);
    }
    let [ann, bob, cid]: [uuid::Uuid; 3] = authors.try_into().unwrap();
    let statements: [(&str, &[uuid::Uuid]); 7] = [
        (
            "INSERT INTO articles (slug, author_id, title, description, body, tag_list)
             VALUES ('one', $1, 'Dragons fly', 'about dragons', 'they breathe fire', ARRAY['b', 'a', 'b'])",
            &[ann],
        ),
        (
            "INSERT INTO articles (slug, author_id, title, description, body, tag_list)
             SELECT 'many-' || i, (ARRAY[$1, $2, $3])[1 + i % 3], 'Title ' || i, 'd', 'b',
                    CASE WHEN i % 4 = 0 THEN '{}' ELSE ARRAY['t' || i % 5, 'a'] END
               FROM generate_series(1, 30) i",
            &[ann, bob, cid],
        ),
        (
            "UPDATE articles SET tag_list = ARRAY['c', 'c', 'a'] WHERE slug = 'one'",
            &[],
        ),
        (
            "UPDATE articles SET title = 'Wyverns swim', body = 'in the sea' WHERE slug = 'many-3'",
            &[],
        ),
        (
            "UPDATE articles SET created_at = now() - interval '1 day' WHERE slug LIKE 'many-1%'",
            &[],
        ),
        (
            "DELETE FROM articles WHERE slug IN ('many-5', 'many-8')",
            &[],
        ),
        ("DELETE FROM users WHERE id = $1", &[cid]),
    ];
    for (sql, params) in statements {
        let mut query = sqlx::query(sql);
        for param in params {
            query = query.bind(param);
        }
        query
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    let mut tx = db(&pool).begin().await.unwrap();
    assert_eq!(
        stoa_api::jobs::kinds::recount_counters(&mut tx)
            .await
            .unwrap(),
        stoa_api::jobs::kinds::Repaired::default(),
        "the triggers kept every counter and entry exact"
    );
    tx.rollback().await.unwrap();
    let (articles, counted, stale_vectors): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM articles),
                (SELECT article_count FROM article_stats),
                (SELECT count(*) FROM articles
                  WHERE search IS DISTINCT FROM stoa_search_vector(
                      (SELECT language FROM search_settings), title, description, body))",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    // 31 written; many-5 and many-8 deleted; cid's other 8 (many-2, -11, ... -29) with cid.
    assert_eq!((articles, counted, stale_vectors), (21, 21, 0));
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
    assert_eq!(
        stoa_api::search::language(&db(&pool)).await.unwrap(),
        "english"
    );
    assert_eq!(
        app.get("/api/articles?q=run", None).await.body["articlesCount"],
        1
    );

    assert_eq!(
        stoa_api::search::set_language(&db(&pool), "simple")
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

    let refused = stoa_api::search::set_language(&db(&pool), "klingon").await;
    assert!(matches!(
        refused,
        Err(stoa_api::search::SearchError::UnknownLanguage(_))
    ));
    assert_eq!(
        stoa_api::search::language(&db(&pool)).await.unwrap(),
        "simple"
    );
}

fn slugs(res: &common::Response, key: &str) -> Vec<String> {
    res.body[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a["slug"]
                .as_str()
                .or(a["body"].as_str())
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// `cursor` with its sixth character changed (inside the position, not padding bits).
fn edited(cursor: &str) -> String {
    let mut chars: Vec<char> = cursor.chars().collect();
    chars[5] = if chars[5] == 'B' { 'C' } else { 'B' };
    chars.into_iter().collect()
}

fn next(res: &common::Response) -> Option<String> {
    res.body["nextCursor"].as_str().map(str::to_owned)
}

/// Cursor pages stay put while new articles arrive (offsets shift), break ties on the
/// same timestamp by id, keep `articlesCount` the total, and refuse cursors that were
/// edited, come from another list, or are combined with `offset` or `q`.
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn cursor_pages_are_stable_under_concurrent_inserts(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let jake = app.register("jake").await;
    for n in 1..=5 {
        app.article(&jake, &format!("a{n}"), &["old"]).await;
    }
    let first = app.get("/api/articles?limit=2", None).await;
    assert_eq!(slugs(&first, "articles"), ["a5", "a4"]);
    let cursor = next(&first).unwrap();
    // An empty cursor (a client passing on an absent `nextCursor`) is the first page.
    let empty = app.get("/api/articles?limit=2&cursor=", None).await;
    assert_eq!(slugs(&empty, "articles"), ["a5", "a4"]);

    // Two new articles: an offset page shifts, the cursor page does not.
    app.article(&jake, "b1", &["new"]).await;
    app.article(&jake, "b2", &["new"]).await;
    let by_offset = app.get("/api/articles?limit=2&offset=2", None).await;
    assert_eq!(slugs(&by_offset, "articles"), ["a5", "a4"]);
    let second = app
        .get(&format!("/api/articles?limit=2&cursor={cursor}"), None)
        .await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.text);
    assert_eq!(slugs(&second, "articles"), ["a3", "a2"]);
    assert_eq!(second.body["articlesCount"], 7);
    let last = app
        .get(
            &format!("/api/articles?limit=2&cursor={}", next(&second).unwrap()),
            None,
        )
        .await;
    assert_eq!(slugs(&last, "articles"), ["a1"]);
    assert!(next(&last).is_none(), "a short page is the last");
    assert_eq!(last.body["articlesCount"], 7);

    // Filters travel with the cursor; a cursor of another list is refused.
    let tagged = app.get("/api/articles?tag=old&limit=3", None).await;
    let tagged_cursor = next(&tagged).unwrap();
    let rest = app
        .get(
            &format!("/api/articles?tag=old&limit=3&cursor={tagged_cursor}"),
            None,
        )
        .await;
    assert_eq!(slugs(&rest, "articles"), ["a2", "a1"]);
    for bad in [
        format!("/api/articles?tag=new&cursor={tagged_cursor}"),
        format!("/api/articles?cursor={tagged_cursor}"),
        format!("/api/articles?cursor={cursor}&offset=1"),
        format!("/api/articles?cursor={cursor}&q=a1"),
        format!("/api/articles?cursor={}", edited(&cursor)),
        "/api/articles?cursor=forged".to_owned(),
    ] {
        let res = app.get(&bad, None).await;
        assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert_eq!(errors(&res, "cursor").len(), 1, "{bad}: {}", res.text);
    }

    // Ties on the timestamp are broken by id: every article exactly once.
    sqlx::query("UPDATE articles SET created_at = '2026-01-01T00:00:00Z'")
        .execute(&pool)
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut page = app.get("/api/articles?limit=3", None).await;
    loop {
        seen.extend(slugs(&page, "articles"));
        let Some(cursor) = next(&page) else { break };
        page = app
            .get(&format!("/api/articles?limit=3&cursor={cursor}"), None)
            .await;
    }
    seen.sort();
    assert_eq!(seen, ["a1", "a2", "a3", "a4", "a5", "b1", "b2"]);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn the_feed_pages_through_one_prolific_author_past_the_others(pool: PgPool) {
    // The feed is read author by author: every page must still be the newest across all of
    // them, however the page falls between authors.
    let app = TestApp::spawn(pool).await;
    let jake = app.register("jake").await;
    let jane = app.register("jane").await;
    let bob = app.register("bob").await;
    let eve = app.register("eve").await;
    app.article(&bob, "b1", &[]).await;
    for n in 1..=4 {
        app.article(&jane, &format!("j{n}"), &[]).await;
    }
    app.article(&eve, "not followed", &[]).await;
    app.article(&bob, "b2", &[]).await;
    for who in ["jane", "bob"] {
        app.post(
            &format!("/api/profiles/{who}/follow"),
            Some(&jake),
            json!({}),
        )
        .await;
    }
    let newest_first = ["b2", "j4", "j3", "j2", "j1", "b1"];

    for (offset, expected) in newest_first.iter().enumerate() {
        let page = app
            .get(
                &format!("/api/articles/feed?limit=1&offset={offset}"),
                Some(&jake),
            )
            .await;
        assert_eq!(slugs(&page, "articles"), [*expected], "offset {offset}");
        assert_eq!(page.body["articlesCount"], 6);
    }
    let page = app
        .get("/api/articles/feed?limit=3&offset=2", Some(&jake))
        .await;
    assert_eq!(slugs(&page, "articles"), ["j3", "j2", "j1"]);
    let far = app
        .get(
            &format!("/api/articles/feed?limit=100&offset={}", i64::MAX),
            Some(&jake),
        )
        .await;
    assert_eq!(far.status, StatusCode::OK, "{}", far.text);
    assert_eq!(far.body, json!({"articles": [], "articlesCount": 6}));

    let mut seen = Vec::new();
    let mut page = app.get("/api/articles/feed?limit=2", Some(&jake)).await;
    loop {
        seen.extend(slugs(&page, "articles"));
        let Some(cursor) = next(&page) else { break };
        page = app
            .get(
                &format!("/api/articles/feed?limit=2&cursor={cursor}"),
                Some(&jake),
            )
            .await;
    }
    assert_eq!(seen, newest_first);

    // The totals are kept per author: a deleted article leaves both at once.
    app.delete("/api/articles/j2", Some(&jane)).await;
    let feed = app.get("/api/articles/feed", Some(&jake)).await;
    assert_eq!(feed.body["articlesCount"], 5);
    assert_eq!(
        app.get("/api/articles?author=jane", None).await.body["articlesCount"],
        3
    );
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn the_feed_and_comments_page_by_cursor_too(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let jane = app.register("jane").await;
    let jake = app.register("jake").await;
    app.post("/api/profiles/jane/follow", Some(&jake), json!({}))
        .await;
    for n in 1..=3 {
        app.article(&jane, &format!("j{n}"), &[]).await;
    }
    let feed = app.get("/api/articles/feed?limit=2", Some(&jake)).await;
    assert_eq!(slugs(&feed, "articles"), ["j3", "j2"]);
    let cursor = next(&feed).unwrap();
    let rest = app
        .get(
            &format!("/api/articles/feed?limit=2&cursor={cursor}"),
            Some(&jake),
        )
        .await;
    assert_eq!(slugs(&rest, "articles"), ["j1"]);
    assert_eq!(rest.body["articlesCount"], 3);
    // Another reader's feed is another list.
    assert_eq!(
        app.get(&format!("/api/articles/feed?cursor={cursor}"), Some(&jane))
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    for n in 1..=3 {
        app.post(
            "/api/articles/j1/comments",
            Some(&jake),
            json!({"comment": {"body": format!("c{n}")}}),
        )
        .await;
    }
    let comments = app.get("/api/articles/j1/comments?limit=2", None).await;
    assert_eq!(slugs(&comments, "comments"), ["c3", "c2"]);
    let cursor = next(&comments).unwrap();
    app.post(
        "/api/articles/j1/comments",
        Some(&jake),
        json!({"comment": {"body": "c4"}}),
    )
    .await;
    let rest = app
        .get(
            &format!("/api/articles/j1/comments?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(slugs(&rest, "comments"), ["c1"]);
    assert_eq!(rest.body["commentsCount"], 4);
    assert_eq!(
        app.get(&format!("/api/articles/j2/comments?cursor={cursor}"), None)
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
}
