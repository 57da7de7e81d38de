//! The overview: users and content, today's sign-ups, the job queue by state, each
//! dependency's readiness, the schema version, the signing keys, the read replica.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;

use crate::http::health::{Check, readiness};
use crate::state::AppState;

use super::pages::{failure, page, respond};
use super::session::ConsoleAdmin;

#[derive(sqlx::FromRow)]
struct Counts {
    users: i64,
    admins: i64,
    disabled: i64,
    signups_today: i64,
    articles: i64,
    comments: i64,
}

pub async fn overview(State(state): State<AppState>, admin: ConsoleAdmin) -> Response {
    // One statement for the counts; the job queue by state is the second.
    let counts = sqlx::query_as::<_, Counts>(
        "SELECT (SELECT count(*) FROM users) AS users,
                (SELECT count(*) FROM users WHERE role = 'admin') AS admins,
                (SELECT count(*) FROM users WHERE disabled_at IS NOT NULL) AS disabled,
                (SELECT count(*) FROM users WHERE created_at >= date_trunc('day', now())) AS signups_today,
                (SELECT count(*) FROM articles) AS articles,
                (SELECT count(*) FROM comments) AS comments",
    )
    .fetch_one(&**state.db())
    .await;
    let jobs = sqlx::query_as::<_, (String, i64)>(
        "SELECT state, count(*) FROM jobs GROUP BY state ORDER BY state",
    )
    .fetch_all(&**state.db())
    .await;
    let (counts, jobs) = match (counts, jobs) {
        (Ok(counts), Ok(jobs)) => (counts, jobs),
        (Err(e), _) | (_, Err(e)) => return failure(&e.into()),
    };
    let (_, ready) = readiness(&state).await;
    let checks = &ready.checks;
    let mut dependencies: Vec<(&str, &Check)> = vec![
        ("Database", &checks.database),
        ("Schema", &checks.schema),
        ("Signing keys", &checks.signing_keys),
        ("Redis", &checks.redis),
        ("Lifecycle", &checks.lifecycle),
    ];
    if let Some(replica) = &checks.read_replica {
        dependencies.push(("Read replica", replica));
    }
    let ring = state.tokens.ring();
    let schema = state.metrics.schema_version.get();
    let cards = [
        ("Users", counts.users),
        ("Signed up today", counts.signups_today),
        ("Admins", counts.admins),
        ("Disabled accounts", counts.disabled),
        ("Articles", counts.articles),
        ("Comments", counts.comments),
    ];
    let body = html! {
        ul.cards aria-label="Counts" {
            @for (label, value) in cards {
                li { span.value { (value) } span.label { (label) } }
            }
        }
        h2 { "Readiness of this replica: " (ready.status) }
        table {
            thead { tr { th scope="col" { "Dependency" } th scope="col" { "State" } th scope="col" { "Detail" } } }
            tbody {
                @for (name, check) in &dependencies {
                    tr {
                        th scope="row" { (name) }
                        td class=(if check.ok { "ok" } else { "bad" }) { (check.status) }
                        td { (check.detail.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
        h2 { "Jobs by state" }
        @if jobs.is_empty() {
            p { "No jobs." }
        } @else {
            table {
                thead { tr { th scope="col" { "State" } th scope="col" { "Jobs" } } }
                tbody { @for (job_state, count) in &jobs { tr { th scope="row" { (job_state) } td { (count) } } } }
            }
        }
        h2 { "Schema and keys" }
        p { "Schema version " strong { (schema) } "." }
        table {
            thead { tr { th scope="col" { "Signing key" } th scope="col" { "State" } } }
            tbody {
                @for (kid, key_state) in ring.kids() {
                    tr { td { code { (kid) } } td { (key_state.as_str()) } }
                }
            }
        }
    };
    respond(StatusCode::OK, page("Overview", Some(admin.header()), body))
}
