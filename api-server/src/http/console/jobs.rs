//! Jobs: the queue by kind and state, the dead ones with their last error, and retrying
//! or discarding a dead job (`jobs::queue`, as `stoa-api jobs` does).

use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use crate::auth::audit;
use crate::error::ApiError;
use crate::jobs::queue;
use crate::state::AppState;

use super::pages::{csrf_refused, failure, page, respond};
use super::session::ConsoleAdmin;

/// Dead jobs shown (newest first).
const DEAD_SHOWN: i64 = 100;

pub async fn list(State(state): State<AppState>, admin: ConsoleAdmin) -> Response {
    let pool = state.db();
    let (depth, dead) = match (
        queue::depth(&pool).await,
        queue::list(&pool, true, DEAD_SHOWN).await,
    ) {
        (Ok(depth), Ok(dead)) => (depth, dead),
        (Err(e), _) | (_, Err(e)) => return failure(&e.into()),
    };
    let body = html! {
        h2 { "Queue by kind" }
        @if depth.is_empty() { p { "No job waiting, running or dead." } } @else {
            table {
                thead { tr {
                    th scope="col" { "Kind" } th scope="col" { "Due" } th scope="col" { "Delayed" }
                    th scope="col" { "Running" } th scope="col" { "Dead" } th scope="col" { "Oldest due" }
                } }
                tbody { @for d in &depth { tr {
                    th scope="row" { (d.kind) } td { (d.queued) } td { (d.delayed) } td { (d.running) }
                    td class=(if d.dead > 0 { "bad" } else { "" }) { (d.dead) }
                    td { (format!("{:.0} s", d.oldest_due_seconds)) }
                } } }
            }
        }
        h2 { "Dead jobs" }
        @if dead.is_empty() { p { "None." } } @else {
            table {
                thead { tr {
                    th scope="col" { "Job" } th scope="col" { "Kind" } th scope="col" { "Attempts" }
                    th scope="col" { "Last error" } th scope="col" { "Actions" }
                } }
                tbody { @for job in &dead { tr {
                    th scope="row" { "#" (job.id) } td { (job.kind) }
                    td { (job.attempts) "/" (job.max_attempts) }
                    td { code { (job.last_error.as_deref().unwrap_or("")) } }
                    td.actions {
                        form method="post" action=(format!("/admin/jobs/{}/retry", job.id)) {
                            input type="hidden" name="csrf" value=(admin.csrf);
                            button type="submit" aria-label=(format!("Retry job {}", job.id)) { "Retry" }
                        }
                        form method="post" action=(format!("/admin/jobs/{}/discard", job.id)) {
                            input type="hidden" name="csrf" value=(admin.csrf);
                            button type="submit" aria-label=(format!("Discard job {}", job.id)) { "Discard" }
                        }
                    }
                } } }
            }
        }
    };
    respond(StatusCode::OK, page("Jobs", Some(admin.header()), body))
}

#[derive(Deserialize)]
pub struct ActionForm {
    csrf: String,
}

/// Retry or discard dead job `id`; back to the jobs page.
pub async fn act(
    State(state): State<AppState>,
    admin: ConsoleAdmin,
    Path((id, action)): Path<(i64, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    if !admin.csrf_matches(&form.csrf) {
        return csrf_refused();
    }
    let result = async {
        let mut tx = state.db().begin().await?;
        let done = match action.as_str() {
            "retry" => queue::retry_dead(&mut tx, id).await?,
            "discard" => queue::discard_dead(&mut tx, id).await?,
            _ => return Err(ApiError::NotFound("action")),
        };
        if !done {
            return Err(ApiError::NotFound("dead job"));
        }
        audit::record(
            &mut tx,
            Some(admin.user_id),
            &format!("{action}_job"),
            &format!("job {id}"),
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            tracing::info!(target: "stoa::security", event = "admin_action", action = %action, admin_id = %admin.user_id, job_id = id, "dead job handled from the console");
            Redirect::to("/admin/jobs").into_response()
        }
        Err(e) => failure(&e),
    }
}
