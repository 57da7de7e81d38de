#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! The admin console over HTTP, as a browser uses it: sign-in for admins only (password,
//! then the TOTP step when the account has one), the session cookie and its limits, CSRF
//! tokens on every form, sign-out everywhere. (`browser.rs` runs it in Chromium.)
mod common;

use common::TestApp;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

/// A browser on the console: its cookies (one site), redirects not followed.
struct Console<'a> {
    app: &'a TestApp,
    http: reqwest::Client,
    cookies: std::collections::BTreeMap<String, String>,
}

struct Page {
    status: StatusCode,
    location: Option<String>,
    headers: reqwest::header::HeaderMap,
    html: String,
}

impl Page {
    /// The value of the form field `name` on the page.
    fn field(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self
            .html
            .find(&marker)
            .unwrap_or_else(|| panic!("no {name} in {}", self.html))
            + marker.len();
        let end = self.html[start..].find('"').unwrap() + start;
        self.html[start..end].to_owned()
    }
}

impl<'a> Console<'a> {
    fn new(app: &'a TestApp) -> Self {
        Console {
            app,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: Default::default(),
        }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let cookies = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let res = request.header("cookie", cookies).send().await.unwrap();
        for value in res.headers().get_all("set-cookie") {
            let value = value.to_str().unwrap();
            let (name, rest) = value.split_once('=').unwrap();
            let content = rest.split(';').next().unwrap();
            if content.is_empty() {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), content.to_owned());
            }
        }
        Page {
            status: res.status(),
            location: res
                .headers()
                .get("location")
                .map(|l| l.to_str().unwrap().to_owned()),
            headers: res.headers().clone(),
            html: res.text().await.unwrap(),
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let request = self.http.get(self.app.url(path));
        self.send(request).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let request = self.http.post(self.app.url(path)).form(form);
        self.send(request).await
    }

    /// The password step, as the sign-in form posts it.
    async fn password(&mut self, email: &str, password: &str) -> Page {
        let form = self.get("/admin/login").await;
        assert_eq!(form.status, StatusCode::OK);
        let csrf = form.field("csrf");
        self.post(
            "/admin/login",
            &[("email", email), ("password", password), ("csrf", &csrf)],
        )
        .await
    }

    async fn sign_in(&mut self, name: &str) -> Page {
        let page = self
            .password(&format!("{name}@example.com"), &format!("password-{name}"))
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
        assert_eq!(page.location.as_deref(), Some("/admin"));
        self.get("/admin").await
    }
}

async fn admin(app: &TestApp, name: &str) -> String {
    let token = app.register(name).await;
    sqlx::query("UPDATE users SET role = 'admin' WHERE username = $1")
        .bind(name)
        .execute(&app.pool)
        .await
        .unwrap();
    token
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn an_admin_signs_in_sees_the_overview_and_signs_out_everywhere(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    admin(&app, "root").await;
    app.register("jake").await;

    let mut first = Console::new(&app);
    let before = first.get("/admin").await;
    assert_eq!(before.status, StatusCode::SEE_OTHER);
    assert_eq!(before.location.as_deref(), Some("/admin/login"));

    let overview = first.sign_in("root").await;
    assert_eq!(overview.status, StatusCode::OK);
    assert!(
        overview.html.contains("<h1>Overview</h1>"),
        "{}",
        overview.html
    );
    assert!(overview.html.contains("Signed in as <strong>root</strong>"));
    // Two users, one signed up today: counted.
    assert!(
        overview
            .html
            .contains(r#"<span class="value">2</span><span class="label">Users</span>"#),
        "{}",
        overview.html
    );
    assert_eq!(
        overview.headers["content-security-policy"],
        stoa_api::http::console::CSP
    );
    assert_eq!(overview.headers["cache-control"], "no-store");
    let cookie = first.cookies.get("__Secure-stoa-console").unwrap().clone();
    assert!(
        !overview.html.contains(&cookie),
        "the session token never reaches the page"
    );
    let css = first.get("/admin/assets/console.css").await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(
        css.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );

    // A second device; signing out everywhere from the first ends both.
    let mut second = Console::new(&app);
    assert_eq!(second.sign_in("root").await.status, StatusCode::OK);
    let csrf = overview.field("csrf");
    let out = first.post("/admin/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(!first.cookies.contains_key("__Secure-stoa-console"));
    assert_eq!(second.get("/admin").await.status, StatusCode::SEE_OTHER);
    first.cookies.insert("__Secure-stoa-console".into(), cookie);
    assert_eq!(
        first.get("/admin").await.status,
        StatusCode::SEE_OTHER,
        "the old cookie is dead"
    );
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn non_admins_wrong_passwords_and_forms_without_their_token_are_refused(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    admin(&app, "root").await;
    app.register("jake").await;
    let mut console = Console::new(&app);

    let wrong = console
        .password("root@example.com", "not-the-password")
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.html.contains("Wrong email or password."));

    let jake = console.password("jake@example.com", "password-jake").await;
    assert_eq!(jake.status, StatusCode::FORBIDDEN);
    assert!(jake.html.contains("This account is not an admin."));
    assert!(!console.cookies.contains_key("__Secure-stoa-console"));
    assert!(
        app.metrics()
            .await
            .contains(r#"stoa_security_events_total{event="admin_denied"} 1"#)
    );

    // The sign-in form without the token its page set (a form on another site).
    let mut elsewhere = Console::new(&app);
    let forged = elsewhere
        .post(
            "/admin/login",
            &[
                ("email", "root@example.com"),
                ("password", "password-root"),
                ("csrf", "guess"),
            ],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(!elsewhere.cookies.contains_key("__Secure-stoa-console"));

    // Signed in, a form with a wrong token changes nothing.
    let overview = console.sign_in("root").await;
    let refused = console
        .post("/admin/logout", &[("csrf", "not-the-token")])
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(
        console.get("/admin").await.status,
        StatusCode::OK,
        "still signed in"
    );
    assert_ne!(overview.field("csrf"), "not-the-token");
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn sessions_end_when_idle_at_their_end_and_when_the_admin_is_demoted(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    admin(&app, "root").await;
    let ends = [
        "UPDATE console_sessions SET last_seen_at = now() - interval '31 minutes'",
        "UPDATE console_sessions SET expires_at = now() - interval '1 second'",
        "UPDATE users SET role = 'user'",
        "UPDATE users SET disabled_at = now()",
    ];
    for end in ends {
        sqlx::query("UPDATE users SET role = 'admin', disabled_at = NULL")
            .execute(&app.pool)
            .await
            .unwrap();
        let mut console = Console::new(&app);
        assert_eq!(console.sign_in("root").await.status, StatusCode::OK);
        sqlx::query(end).execute(&app.pool).await.unwrap();
        let page = console.get("/admin").await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{end}");
        assert_eq!(page.location.as_deref(), Some("/admin/login"));
    }
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn an_admin_with_mfa_passes_the_totp_step(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let token = admin(&app, "root").await;
    let totp = common::enable_totp(&app, &token, Some("password-root")).await;
    let now = common::unix_now();
    let code_at = |t: u64| totp.generate(t);

    let mut console = Console::new(&app);
    let step = console.password("root@example.com", "password-root").await;
    assert_eq!(step.status, StatusCode::OK);
    assert!(step.html.contains("<h1>Second factor</h1>"));
    assert!(
        !console.cookies.contains_key("__Secure-stoa-console"),
        "no session before the code"
    );
    let (challenge, csrf) = (step.field("challenge"), step.field("csrf"));

    let wrong = console
        .post(
            "/admin/login/mfa",
            &[
                ("challenge", &challenge),
                ("code", "000000"),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.html.contains("That code is wrong"));
    let right = console
        .post(
            "/admin/login/mfa",
            &[
                ("challenge", &challenge),
                ("code", &code_at(now)),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(right.status, StatusCode::SEE_OTHER, "{}", right.html);
    assert_eq!(console.get("/admin").await.status, StatusCode::OK);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn admins_find_users_and_act_on_them_through_the_apis_own_paths(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    admin(&app, "root").await;
    let jake = app.register("jake").await;
    app.register("jane").await;
    app.register("per%cent").await;
    let mut console = Console::new(&app);
    console.sign_in("root").await;

    let all = console.get("/admin/users").await;
    assert_eq!(all.status, StatusCode::OK);
    for name in ["root", "jake", "jane"] {
        assert!(
            all.html.contains(&format!(">{name}</a>")),
            "{name}: {}",
            all.html
        );
    }
    let search = console.get("/admin/users?q=JA").await;
    assert!(search.html.contains(">jake</a>") && search.html.contains(">jane</a>"));
    assert!(!search.html.contains(">root</a>"));
    // `%` is matched literally, not as a wildcard.
    let literal = console.get("/admin/users?q=%25").await;
    assert!(literal.html.contains(">per%cent</a>") && !literal.html.contains(">jake</a>"));
    let admins = console.get("/admin/users?only=admins").await;
    assert!(admins.html.contains(">root</a>") && !admins.html.contains(">jake</a>"));

    let page = console.get("/admin/users/jake").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.html.contains("<h1>jake</h1>"));
    assert!(page.html.contains("Sessions (1)"), "{}", page.html);
    let csrf = page.field("csrf");

    // Without the session's token: refused, nothing changed.
    let forged = console
        .post("/admin/users/jake/disable", &[("csrf", "x")])
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.get("/api/user", Some(&jake)).await.status,
        StatusCode::OK
    );

    let done = console
        .post("/admin/users/jake/disable", &[("csrf", &csrf)])
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    let page = console.get(done.location.as_deref().unwrap()).await;
    assert!(
        page.html
            .contains("The account is disabled and its sessions ended.")
    );
    assert!(page.html.contains("disabled since"));
    // The API refuses jake's token at once, as after `POST /api/admin/users/jake/disable`.
    assert_eq!(
        app.get("/api/user", Some(&jake)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert!(
        app.metrics()
            .await
            .contains(r#"stoa_security_events_total{event="admin_action"} 1"#)
    );

    let back = console
        .post("/admin/users/jake/enable", &[("csrf", &csrf)])
        .await;
    assert_eq!(back.status, StatusCode::SEE_OTHER);
    let (token, _) = common::login(&app, "jake").await;
    let ended = console
        .post("/admin/users/jake/end-sessions", &[("csrf", &csrf)])
        .await;
    assert_eq!(ended.status, StatusCode::SEE_OTHER);
    assert_eq!(
        app.get("/api/user", Some(&token)).await.status,
        StatusCode::UNAUTHORIZED
    );

    // An admin cannot disable themselves (another admin or the command line can).
    let own = console
        .post("/admin/users/root/disable", &[("csrf", &csrf)])
        .await;
    assert_eq!(own.status, StatusCode::FORBIDDEN);
    assert!(own.html.contains("is your own account"), "{}", own.html);
    let unknown = console
        .post("/admin/users/nobody/disable", &[("csrf", &csrf)])
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn content_is_removed_with_a_reason_the_audit_log_keeps(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    admin(&app, "root").await;
    let jake = app.register("jake").await;
    let slug = app.article(&jake, "Buy cheap watches", &["spam"]).await;
    let kept = app.article(&jake, "A fine essay", &[]).await;
    let comments = format!("/api/articles/{slug}/comments");
    let comment = app
        .post(
            &comments,
            Some(&jake),
            json!({"comment": {"body": "<script>alert(1)</script> click here"}}),
        )
        .await;
    let comment_id = comment.body["comment"]["id"].as_i64().unwrap();
    let mut console = Console::new(&app);
    console.sign_in("root").await;

    let found = console.get("/admin/articles?q=watches").await;
    assert!(
        found.html.contains(">Buy cheap watches</a>"),
        "{}",
        found.html
    );
    assert!(!found.html.contains("A fine essay"));
    let view = console.get(&format!("/admin/articles/{slug}")).await;
    assert_eq!(view.status, StatusCode::OK);
    // User content is shown as text, never as markup.
    assert!(
        view.html
            .contains("&lt;script&gt;alert(1)&lt;/script&gt; click here")
    );
    assert!(!view.html.contains("<script>"));
    let csrf = view.field("csrf");

    let removed = console
        .post(
            &format!("/admin/articles/{slug}/comments/{comment_id}/remove"),
            &[("csrf", &csrf), ("reason", "link spam")],
        )
        .await;
    assert_eq!(removed.status, StatusCode::SEE_OTHER, "{}", removed.html);
    assert_eq!(app.get(&comments, None).await.body["commentsCount"], 0);

    let no_reason = console
        .post(
            &format!("/admin/articles/{slug}/remove"),
            &[("csrf", &csrf), ("reason", " ")],
        )
        .await;
    assert_eq!(no_reason.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(no_reason.html.contains("reason is required"));
    assert_eq!(
        app.get(&format!("/api/articles/{slug}"), None).await.status,
        StatusCode::OK
    );
    let removed = console
        .post(
            &format!("/admin/articles/{slug}/remove"),
            &[("csrf", &csrf), ("reason", "spam")],
        )
        .await;
    assert_eq!(removed.status, StatusCode::SEE_OTHER);
    assert_eq!(
        app.get(&format!("/api/articles/{slug}"), None).await.status,
        StatusCode::NOT_FOUND
    );

    // The API's removal is recorded the same way, with its optional reason (a token
    // issued since the role was granted carries it).
    let (root, _) = common::login(&app, "root").await;
    let api = app
        .delete(
            &format!("/api/admin/articles/{kept}?reason=duplicate"),
            Some(&root),
        )
        .await;
    assert_eq!(api.status, StatusCode::NO_CONTENT);

    let log = console.get("/admin/audit").await;
    assert_eq!(log.status, StatusCode::OK);
    for expected in [
        "<td>remove_comment</td><td>buy-cheap-watches#",
        "<td>link spam</td>",
        "<td>remove_article</td><td>buy-cheap-watches</td><td>spam</td>",
        "<td>duplicate</td>",
    ] {
        assert!(log.html.contains(expected), "{expected}: {}", log.html);
    }
    assert!(
        log.html.contains("<td>root</td>"),
        "the acting admin is named"
    );
    let filtered = console.get("/admin/audit?action=remove_comment").await;
    assert!(filtered.html.contains("link spam") && !filtered.html.contains("<td>duplicate</td>"));
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn dead_jobs_are_retried_or_discarded(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    admin(&app, "root").await;
    let ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO jobs (kind, state, attempts, max_attempts, last_error, finished_at)
         VALUES ('purge_expired', 'dead', 5, 5, 'statement timeout', now()),
                ('recount_counters', 'dead', 5, 5, 'deadlock detected', now())
         RETURNING id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let mut console = Console::new(&app);
    console.sign_in("root").await;
    let page = console.get("/admin/jobs").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.html.contains("statement timeout") && page.html.contains("deadlock detected"));
    let csrf = page.field("csrf");

    let retried = console
        .post(&format!("/admin/jobs/{}/retry", ids[0]), &[("csrf", &csrf)])
        .await;
    assert_eq!(retried.status, StatusCode::SEE_OTHER);
    let discarded = console
        .post(
            &format!("/admin/jobs/{}/discard", ids[1]),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(discarded.status, StatusCode::SEE_OTHER);
    let states: Vec<(i64, String, i32)> =
        sqlx::query_as("SELECT id, state, attempts FROM jobs ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(states, vec![(ids[0], "queued".to_owned(), 0)]);
    // Only a dead job can be retried or discarded.
    let again = console
        .post(&format!("/admin/jobs/{}/retry", ids[0]), &[("csrf", &csrf)])
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    let log = console.get("/admin/audit").await;
    assert!(log.html.contains("<td>retry_job</td>") && log.html.contains("<td>discard_job</td>"));
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn security_events_are_kept_and_shown_by_event_and_account(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    admin(&app, "root").await;
    app.register("jake").await;
    for _ in 0..2 {
        let wrong = app
            .post(
                "/api/users/login",
                None,
                json!({"user": {"email": "jake@example.com", "password": "not-jakes"}}),
            )
            .await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    }
    // An unknown account's failure is kept too, without an account.
    app.post(
        "/api/users/login",
        None,
        json!({"user": {"email": "nobody@example.com", "password": "whatever1"}}),
    )
    .await;
    // Stored in the background: wait for the writer.
    common::eventually("the events are stored", || async {
        let stored: i64 =
            sqlx::query_scalar("SELECT count(*) FROM security_events WHERE event = 'login_failed'")
                .fetch_one(&app.pool)
                .await
                .unwrap();
        stored == 3
    })
    .await;

    let mut console = Console::new(&app);
    console.sign_in("root").await;
    let all = console.get("/admin/events?event=login_failed").await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(
        all.html.matches("<td>login_failed</td>").count(),
        3,
        "{}",
        all.html
    );
    let jakes = console.get("/admin/events?user=jake").await;
    assert_eq!(jakes.html.matches("<td>login_failed</td>").count(), 2);
    let page = console.get("/admin/users/jake").await;
    assert_eq!(page.html.matches("<td>login_failed</td>").count(), 2);
    assert!(
        app.metrics()
            .await
            .contains("stoa_security_events_dropped_total 0")
    );
}
