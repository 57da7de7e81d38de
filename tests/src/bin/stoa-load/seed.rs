//! The bench data, seeded through the API as a client would: users, their follows and
//! favorites, articles with tags, comments, and a reader of a few prolific authors.

use std::time::Instant;

use anyhow::{Context, bail};
use rand::Rng;
use rand::seq::SliceRandom;
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

/// What the seeding step produced, shared by all workers.
pub struct Seed {
    pub tokens: Vec<String>,
    /// Readers who follow only the prolific authors.
    pub prolific_readers: Vec<String>,
    pub usernames: Vec<String>,
    pub slugs: Vec<String>,
    pub popular_tag: String,
    /// How many articles precede the deep page, and the cursor that points there.
    pub deep_offset: usize,
    pub deep_cursor: String,
}

pub const TAGS: &[&str] = &[
    "rust",
    "kubernetes",
    "postgres",
    "redis",
    "axum",
    "tokio",
    "web",
    "ops",
    "security",
    "sre",
    "api",
    "design",
    "testing",
    "performance",
    "databases",
    "networking",
    "observability",
    "cloud",
    "linux",
    "career",
];

/// Authors each user follows: the feed's wide shape.
const FOLLOWS_PER_USER: usize = 20;
/// Articles each user favorites.
const FAVORITES_PER_USER: usize = 12;
/// The prolific authors, and the readers who follow only them.
const PROLIFIC_AUTHORS: usize = 3;
const PROLIFIC_READERS: usize = 4;

pub async fn call(
    client: &Client,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<(StatusCode, Value)> {
    let mut req = client.request(method, url);
    if let Some(token) = token {
        req = req.header("Authorization", format!("Token {token}"));
    }
    if let Some(body) = body {
        req = req.json(body);
    }
    let res = req.send().await?;
    let status = res.status();
    let value = res.json().await.unwrap_or(Value::Null);
    Ok((status, value))
}

/// Registers a user; returns its token.
async fn register(client: &Client, base: &str, username: &str) -> anyhow::Result<String> {
    let body = json!({"user": {"username": username, "email": format!("{username}@load.example"), "password": "load-test-password"}});
    let (status, value) = call(
        client,
        Method::POST,
        &format!("{base}/api/users"),
        None,
        Some(&body),
    )
    .await?;
    if status != StatusCode::CREATED {
        bail!("registering {username}: {status} {value}");
    }
    Ok(value["user"]["token"].as_str().context("token")?.to_owned())
}

/// Publishes article `i` (1-3 tags) as `token`; returns its slug.
async fn publish(
    client: &Client,
    base: &str,
    token: &str,
    i: usize,
    rng: &mut impl Rng,
) -> anyhow::Result<String> {
    let count = rng.gen_range(1..=3);
    let tags: Vec<&str> = TAGS.choose_multiple(rng, count).copied().collect();
    let body = json!({"article": {
        "title": format!("Load article {i} about {}", tags[0]),
        "description": "A realistic description of a realistic article, one sentence long.",
        "body": "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(20),
        "tagList": tags,
    }});
    let (status, value) = call(
        client,
        Method::POST,
        &format!("{base}/api/articles"),
        Some(token),
        Some(&body),
    )
    .await?;
    if status != StatusCode::CREATED {
        bail!("creating article {i}: {status} {value}");
    }
    Ok(value["article"]["slug"]
        .as_str()
        .context("slug")?
        .to_owned())
}

async fn follow(client: &Client, base: &str, token: &str, username: &str) -> anyhow::Result<()> {
    let (status, value) = call(
        client,
        Method::POST,
        &format!("{base}/api/profiles/{username}/follow"),
        Some(token),
        Some(&json!({})),
    )
    .await?;
    if status != StatusCode::OK {
        bail!("following {username}: {status} {value}");
    }
    Ok(())
}

/// The bench data: `users` users who each follow the next 20 and favorite 12 articles,
/// `articles` articles by them in turn, a comment on 3 in 10; before those, 3 prolific
/// authors' older articles, followed (only) by 4 more readers.
pub async fn seed(
    client: &Client,
    base: &str,
    users: usize,
    articles: usize,
    prolific_articles: usize,
) -> anyhow::Result<Seed> {
    let started = Instant::now();
    let site = Site {
        client,
        base,
        run: rand::random::<u32>(),
    };
    let mut rng = rand::thread_rng();
    let mut slugs = Vec::with_capacity(articles + PROLIFIC_AUTHORS * prolific_articles);
    let prolific_readers = site
        .prolific_authors_and_readers(prolific_articles, &mut slugs, &mut rng)
        .await?;
    let (tokens, usernames) = site
        .users_and_articles(users, articles, &mut slugs, &mut rng)
        .await?;
    let follows = FOLLOWS_PER_USER.min(users - 1);
    site.follows_and_favorites(&tokens, &usernames, follows, &slugs, &mut rng)
        .await?;
    site.comments(&tokens, &slugs, articles * 3 / 10).await?;
    eprintln!(
        "seeded {} users, {} articles ({} by {PROLIFIC_AUTHORS} prolific authors), {} follows, {} favorites in {:.1}s",
        users + PROLIFIC_AUTHORS + PROLIFIC_READERS,
        slugs.len(),
        PROLIFIC_AUTHORS * prolific_articles,
        users * follows + PROLIFIC_READERS * PROLIFIC_AUTHORS,
        users * FAVORITES_PER_USER,
        started.elapsed().as_secs_f64()
    );
    let deep_offset = slugs.len() * 9 / 10;
    let deep_cursor = site.cursor_after(deep_offset).await?;
    Ok(Seed {
        tokens,
        prolific_readers,
        usernames,
        slugs,
        popular_tag: TAGS[0].to_owned(),
        deep_offset,
        deep_cursor,
    })
}

/// The server being seeded, and this run's prefix for names.
struct Site<'a> {
    client: &'a Client,
    base: &'a str,
    run: u32,
}

impl Site<'_> {
    /// The prolific authors' articles (pushed to `slugs`), and the readers who follow only
    /// them (their tokens).
    async fn prolific_authors_and_readers(
        &self,
        prolific_articles: usize,
        slugs: &mut Vec<String>,
        rng: &mut impl Rng,
    ) -> anyhow::Result<Vec<String>> {
        let (client, base, run) = (self.client, self.base, self.run);
        let mut prolific = Vec::with_capacity(PROLIFIC_AUTHORS);
        for p in 0..PROLIFIC_AUTHORS {
            let username = format!("load{run:x}p{p}");
            prolific.push((register(client, base, &username).await?, username));
        }
        for i in 0..PROLIFIC_AUTHORS * prolific_articles {
            let (token, _) = &prolific[i % PROLIFIC_AUTHORS];
            slugs.push(publish(client, base, token, i, rng).await?);
        }
        let mut readers = Vec::with_capacity(PROLIFIC_READERS);
        for r in 0..PROLIFIC_READERS {
            let token = register(client, base, &format!("load{run:x}r{r}")).await?;
            for (_, author) in &prolific {
                follow(client, base, &token, author).await?;
            }
            readers.push(token);
        }
        Ok(readers)
    }

    /// `users` users (their tokens and names) and `articles` articles by them in turn.
    async fn users_and_articles(
        &self,
        users: usize,
        articles: usize,
        slugs: &mut Vec<String>,
        rng: &mut impl Rng,
    ) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let (client, base, run) = (self.client, self.base, self.run);
        let mut tokens = Vec::with_capacity(users);
        let mut usernames = Vec::with_capacity(users);
        for i in 0..users {
            let username = format!("load{run:x}u{i}");
            tokens.push(register(client, base, &username).await?);
            usernames.push(username);
        }
        for i in 0..articles {
            let offset = slugs.len();
            slugs.push(publish(client, base, &tokens[i % users], offset + i, rng).await?);
        }
        Ok((tokens, usernames))
    }

    /// Each user follows the next `follows` and favorites a few articles at random.
    async fn follows_and_favorites(
        &self,
        tokens: &[String],
        usernames: &[String],
        follows: usize,
        slugs: &[String],
        rng: &mut impl Rng,
    ) -> anyhow::Result<()> {
        let (client, base) = (self.client, self.base);
        for (i, token) in tokens.iter().enumerate() {
            for k in 1..=follows {
                follow(client, base, token, &usernames[(i + k) % usernames.len()]).await?;
            }
            for slug in slugs.choose_multiple(rng, FAVORITES_PER_USER) {
                call(
                    client,
                    Method::POST,
                    &format!("{base}/api/articles/{slug}/favorite"),
                    Some(token),
                    Some(&json!({})),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// A comment on each of the `count` newest articles, by the users in turn.
    async fn comments(
        &self,
        tokens: &[String],
        slugs: &[String],
        count: usize,
    ) -> anyhow::Result<()> {
        let (client, base) = (self.client, self.base);
        for (i, slug) in slugs.iter().rev().enumerate().take(count) {
            let body = json!({"comment": {"body": "Thoughtful comment."}});
            call(
                client,
                Method::POST,
                &format!("{base}/api/articles/{slug}/comments"),
                Some(&tokens[i % tokens.len()]),
                Some(&body),
            )
            .await?;
        }
        Ok(())
    }

    /// The cursor after the `offset` newest articles, by paging there (100 at a time).
    async fn cursor_after(&self, offset: usize) -> anyhow::Result<String> {
        let (client, base) = (self.client, self.base);
        let mut cursor = String::new();
        let mut walked = 0;
        while walked < offset {
            let limit = (offset - walked).min(100);
            let mut url = format!("{base}/api/articles?limit={limit}");
            if !cursor.is_empty() {
                url.push_str(&format!("&cursor={cursor}"));
            }
            let (_, page) = call(client, Method::GET, &url, None, None).await?;
            cursor = page["nextCursor"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("no nextCursor after {walked} articles: {page}"))?
                .to_owned();
            walked += limit;
        }
        Ok(cursor)
    }
}
