//! Demo data for front-end work (`stoa-api seed`, `make run DEMO=1`): a small, fixed data
//! set that a RealWorld client can be developed against.
//!
//! Every write goes through the public API's own router, in-process: the same
//! validation, password hashing, slugs, counters, triggers and cache invalidation as a
//! client's request, so the data is exactly what the API would have made. Rate limits are
//! off for the command (it is the operator's own, local action).

use std::fmt;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::db::Pool;

/// Every demo user's password.
pub const DEMO_PASSWORD: &str = "stoa-demo-password";

pub struct DemoUser {
    pub username: &'static str,
    pub email: &'static str,
    pub bio: &'static str,
}

pub struct DemoArticle {
    pub author: &'static str,
    pub title: &'static str,
    pub description: &'static str,
    pub body: &'static str,
    pub tags: &'static [&'static str],
}

pub const USERS: [DemoUser; 4] = [
    DemoUser {
        username: "alice",
        email: "alice@example.com",
        bio: "Writes about Rust and the web.",
    },
    DemoUser {
        username: "bob",
        email: "bob@example.com",
        bio: "Runs Kubernetes clusters for a living.",
    },
    DemoUser {
        username: "carol",
        email: "carol@example.com",
        bio: "Database person. Likes indexes.",
    },
    DemoUser {
        username: "dave",
        email: "dave@example.com",
        bio: "Reads everything, writes little.",
    },
];

pub const ARTICLES: [DemoArticle; 8] = [
    DemoArticle {
        author: "alice",
        title: "Getting started with axum",
        description: "Routers, extractors and handlers in ten minutes",
        body: "axum builds on **tower** and **hyper**.\n\n## Routers\n\nA `Router` maps paths to handlers.\n\n## Extractors\n\nHandlers take what they need as arguments.",
        tags: &["rust", "web", "axum"],
    },
    DemoArticle {
        author: "alice",
        title: "Error handling that scales",
        description: "One error type, mapped to responses in one place",
        body: "Keep errors as types (`thiserror`) and map them to HTTP answers once.\n\nEvery handler then returns `Result<_, ApiError>`.",
        tags: &["rust", "web"],
    },
    DemoArticle {
        author: "bob",
        title: "Zero-downtime rollouts on Kubernetes",
        description: "Readiness, surge and migrations that gate the rollout",
        body: "A rollout is only as safe as its readiness probe.\n\nRun the expand migrations first, the contract ones once no old pod remains.",
        tags: &["kubernetes", "devops"],
    },
    DemoArticle {
        author: "bob",
        title: "Rotating secrets without a restart",
        description: "Watch the mounted file, reload, keep the old key until it expires",
        body: "Kubernetes updates mounted Secrets in place.\n\nA server that watches the file can switch keys without dropping a request.",
        tags: &["kubernetes", "security"],
    },
    DemoArticle {
        author: "carol",
        title: "Indexes your feed needs",
        description: "Why (author_id, created_at) beats a site-wide recency index",
        body: "A feed reads the newest articles of a few authors.\n\nAn index per author, newest first, reads only those rows.",
        tags: &["postgres", "performance"],
    },
    DemoArticle {
        author: "carol",
        title: "Transactions for every write",
        description: "No half-written rows, ever",
        body: "Wrap each write in a transaction.\n\nIf any step fails, nothing of it is visible.",
        tags: &["postgres"],
    },
    DemoArticle {
        author: "carol",
        title: "Caching reads with Redis",
        description: "Shared entries, precise invalidation",
        body: "Cache anonymous reads by their canonical URL and drop the entries a write touches.",
        tags: &["performance", "web"],
    },
    DemoArticle {
        author: "dave",
        title: "Notes from a RealWorld client",
        description: "What a front end expects from the API",
        body: "Trailing slashes, `Token` headers and `{\"errors\": {...}}` bodies.\n\nAll of it is in the spec.",
        tags: &["web"],
    },
];

/// (follower, followed)
pub const FOLLOWS: [(&str, &str); 6] = [
    ("alice", "bob"),
    ("alice", "carol"),
    ("bob", "carol"),
    ("carol", "alice"),
    ("dave", "alice"),
    ("dave", "carol"),
];

/// (user, index into [`ARTICLES`])
pub const FAVORITES: [(&str, usize); 7] = [
    ("bob", 0),
    ("carol", 0),
    ("dave", 0),
    ("alice", 4),
    ("dave", 4),
    ("alice", 2),
    ("dave", 7),
];

/// (user, index into [`ARTICLES`], body)
pub const COMMENTS: [(&str, usize, &str); 5] = [
    ("bob", 0, "Clear and short. The extractor part helped."),
    ("carol", 0, "How do you share a pool between handlers?"),
    ("alice", 0, "Through the state: `State<AppState>` holds it."),
    (
        "alice",
        4,
        "Measured it on my data: the feed went from 40 ms to 2 ms.",
    ),
    ("dave", 2, "Which probe do you use for readiness?"),
];

/// What to do when the database already has users.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenNotEmpty {
    /// Stop with [`SeedError::NotEmpty`] (the default: never mix demo data into real data
    /// by accident).
    Refuse,
    /// Change nothing and succeed (`make run DEMO=1` on its second start).
    Skip,
    /// Load anyway: existing demo users are signed in with the demo password, and an
    /// article a demo user already has (by title) is not written again.
    Load,
}

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error(
        "the database already has {0} user(s); refusing to add demo data (pass --force to add it anyway)"
    )]
    NotEmpty(i64),
    #[error("cannot read the users table (is the database migrated? `stoa-api migrate`): {0}")]
    Database(#[from] sqlx::Error),
    #[error(
        "user {0} exists but does not accept the demo password (or has a second factor); not seeding as them"
    )]
    ForeignUser(String),
    #[error("{what}: the API answered {status}: {body}")]
    Rejected {
        what: String,
        status: StatusCode,
        body: String,
    },
}

/// What a run added.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub skipped: bool,
    pub users: usize,
    pub articles: usize,
    pub follows: usize,
    pub favorites: usize,
    pub comments: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.skipped {
            return write!(f, "the database already has users; demo data not loaded");
        }
        write!(
            f,
            "demo data loaded: {} users, {} articles, {} follows, {} favorites, {} comments \
             (sign in as alice@example.com, bob@example.com, carol@example.com or \
             dave@example.com with the password {DEMO_PASSWORD})",
            self.users, self.articles, self.follows, self.favorites, self.comments
        )
    }
}

/// Loads the demo data set through `api` (the public router, [`crate::http::router`]).
pub async fn load(api: Router, db: &Pool, when: WhenNotEmpty) -> Result<Summary, SeedError> {
    let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(db)
        .await?;
    if existing > 0 {
        match when {
            WhenNotEmpty::Refuse => return Err(SeedError::NotEmpty(existing)),
            WhenNotEmpty::Skip => {
                return Ok(Summary {
                    skipped: true,
                    ..Summary::default()
                });
            }
            WhenNotEmpty::Load => {}
        }
    }
    let api = Api(api);
    let mut summary = Summary::default();

    let mut tokens = Vec::with_capacity(USERS.len());
    for user in &USERS {
        let (token, created) = api.sign_up_or_in(user).await?;
        summary.users += usize::from(created);
        tokens.push((user.username, token));
    }
    let token_of = |name: &str| {
        tokens
            .iter()
            .find(|(username, _)| *username == name)
            .map(|(_, token)| token.as_str())
            .unwrap_or_default()
    };

    // The slug of each article, and whether this run wrote it (comments go only on those,
    // so a forced second run adds no duplicates).
    let mut slugs = Vec::with_capacity(ARTICLES.len());
    for article in &ARTICLES {
        let token = token_of(article.author);
        let (slug, created) = match api.article_titled(article).await? {
            Some(slug) => (slug, false),
            None => (api.publish(token, article).await?, true),
        };
        summary.articles += usize::from(created);
        slugs.push((slug, created));
    }
    // Follows and favorites are idempotent; each is counted only where it is new.
    for (follower, followed) in FOLLOWS {
        let token = Some(token_of(follower));
        let profile = format!("/api/profiles/{followed}");
        if api.expect(Method::GET, &profile, token, None).await?["profile"]["following"] == true {
            continue;
        }
        api.expect(Method::POST, &format!("{profile}/follow"), token, None)
            .await?;
        summary.follows += 1;
    }
    for (user, index) in FAVORITES {
        let token = Some(token_of(user));
        let article = format!("/api/articles/{}", slugs[index].0);
        if api.expect(Method::GET, &article, token, None).await?["article"]["favorited"] == true {
            continue;
        }
        api.expect(Method::POST, &format!("{article}/favorite"), token, None)
            .await?;
        summary.favorites += 1;
    }
    for (user, index, body) in COMMENTS {
        let (slug, created) = &slugs[index];
        if !created {
            continue;
        }
        let path = format!("/api/articles/{slug}/comments");
        let comment = json!({ "comment": { "body": body } });
        api.expect(Method::POST, &path, Some(token_of(user)), Some(comment))
            .await?;
        summary.comments += 1;
    }
    Ok(summary)
}

/// The public router, called in-process.
struct Api(Router);

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), SeedError> {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Token {token}"));
        }
        let body = match body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(body.to_string())
            }
            None => Body::empty(),
        };
        let rejected = |status, body: String| SeedError::Rejected {
            what: path.to_owned(),
            status,
            body,
        };
        let request = request
            .body(body)
            .map_err(|e| rejected(StatusCode::BAD_REQUEST, e.to_string()))?;
        let response = match self.0.clone().oneshot(request).await {
            Ok(response) => response,
            Err(infallible) => match infallible {},
        };
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .map_err(|e| rejected(status, e.to_string()))?;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// The answer's body when the status is a success; the API's error otherwise. Error
    /// bodies carry no secrets (tokens are only in successful answers).
    async fn expect(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Value, SeedError> {
        let (status, value) = self.call(method.clone(), path, token, body).await?;
        if status.is_success() {
            return Ok(value);
        }
        Err(SeedError::Rejected {
            what: format!("{method} {path}"),
            status,
            body: value.to_string(),
        })
    }

    /// A token for `user`: registered now (true), or already there and signed in with
    /// the demo password (false).
    async fn sign_up_or_in(&self, user: &DemoUser) -> Result<(String, bool), SeedError> {
        let profile = format!("/api/profiles/{}", user.username);
        let (status, _) = self.call(Method::GET, &profile, None, None).await?;
        let (answer, created) = if status == StatusCode::NOT_FOUND {
            let new_user = json!({ "user": {
                "username": user.username, "email": user.email, "password": DEMO_PASSWORD,
            }});
            let answer = self
                .expect(Method::POST, "/api/users", None, Some(new_user))
                .await?;
            (answer, true)
        } else {
            let login = json!({ "user": { "email": user.email, "password": DEMO_PASSWORD } });
            let (status, answer) = self
                .call(Method::POST, "/api/users/login", None, Some(login))
                .await?;
            if status != StatusCode::OK {
                return Err(SeedError::ForeignUser(user.username.to_owned()));
            }
            (answer, false)
        };
        let token = answer["user"]["token"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if created {
            let bio = json!({ "user": { "bio": user.bio } });
            self.expect(Method::PUT, "/api/user", Some(&token), Some(bio))
                .await?;
        }
        Ok((token, created))
    }

    /// The slug of the author's article with this title, if they already have one.
    async fn article_titled(&self, article: &DemoArticle) -> Result<Option<String>, SeedError> {
        let path = format!("/api/articles?author={}&limit=100", article.author);
        let listed = self.expect(Method::GET, &path, None, None).await?;
        Ok(listed["articles"].as_array().and_then(|articles| {
            articles
                .iter()
                .find(|a| a["title"] == article.title)
                .and_then(|a| a["slug"].as_str().map(str::to_owned))
        }))
    }

    async fn publish(&self, token: &str, article: &DemoArticle) -> Result<String, SeedError> {
        let body = json!({ "article": {
            "title": article.title,
            "description": article.description,
            "body": article.body,
            "tagList": article.tags,
        }});
        let created = self
            .expect(Method::POST, "/api/articles", Some(token), Some(body))
            .await?;
        Ok(created["article"]["slug"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }
}
