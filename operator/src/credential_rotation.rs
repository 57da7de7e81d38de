//! Protocol 3: the database credential rotates, and every pod switches before the old
//! password goes.
//!
//! A pure decision over the operator's connection Secret (`<name>-db-credentials`: the
//! published URL and, during a rotation, the pending role and password, as annotations
//! and data), the credential Jobs of the current generation, and what each ready pod
//! reports (the fingerprint of the URL it uses). The controller observes, calls
//! [`decide`], and applies.
//!
//! Two login roles share one group (`stoa_contract::credential_rotation`); each rotation moves to
//! the idle one:
//! 1. **Begin**: pick the idle role, generate its password, store both in the Secret
//!    (not yet in `url`).
//! 2. **Publish Job** (`stoa-api credentials publish`, admin credential): the role gets the
//!    password (roles and grants are created on the first run).
//! 3. **Publish**: `url` now names the new role; pods swap their pool when the kubelet
//!    refreshes the mounted file (stoa-api drains the old pool).
//! 4. **Confirm**: every ready pod reports the new URL's fingerprint.
//! 5. **Expire Job** (`stoa-api credentials expire`): waits until no session of the
//!    previous role remains (each pod names its sessions with its pod name), then removes
//!    its password; if sessions remain it fails naming the pods, and is retried.
//!
//! The first rotation starts from the URL the user gave (`urlSecretRef`), whose role the
//! operator does not manage and never expires.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use stoa_contract::credential_rotation::login_roles;

use crate::crd::{self, Stoa};
use crate::jobs::backoff;
pub use crate::resources::{JobKind, PASSWORD_KEY, URL_KEY, rotation_enabled as enabled};

/// On the Stoa: changing its value asks for a rotation now.
pub const ROTATE_ANNOTATION: &str = "stoa.dev/rotate-credentials";
/// On the connection Secret: the login role in `url` (absent: the user's credential).
pub const ROLE_ANNOTATION: &str = "stoa.dev/credential-role";
/// The role being given a new password (its password is the Secret's `password` key).
pub const PENDING_ANNOTATION: &str = "stoa.dev/credential-pending";
/// The role that was replaced and whose password has not been expired yet.
pub const PREVIOUS_ANNOTATION: &str = "stoa.dev/credential-previous";
pub const PUBLISHED_AT_ANNOTATION: &str = "stoa.dev/credential-published-at";
/// Counts rotations; names the Jobs of each.
pub const GENERATION_ANNOTATION: &str = "stoa.dev/credential-generation";
pub const HANDLED_REQUEST_ANNOTATION: &str = "stoa.dev/rotate-credentials-handled";
/// On the Stoa while the operator has database roles to drop on deletion.
pub const FINALIZER: &str = "stoa.dev/database-roles";

/// The group role of a Stoa: `stoa_<namespace>_<name>` made a valid role name, shortened
/// with a digest when long (roles are per PostgreSQL server, so the namespace is in it).
pub fn group_role(namespace: &str, name: &str) -> String {
    use sha2::{Digest, Sha256};
    let raw = format!("stoa_{namespace}_{name}");
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if clean.len() <= 40 {
        return clean;
    }
    let digest = Sha256::digest(raw.as_bytes());
    let suffix: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}_{suffix}", &clean[..31])
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub every: Duration,
    pub confirm_timeout: Duration,
}

impl Timing {
    pub fn of(stoa: &Stoa) -> Result<Timing, String> {
        let spec = &stoa.spec.database.credential_rotation;
        Ok(Timing {
            every: crd::duration("database.credentialRotation.every", &spec.every)?,
            confirm_timeout: crd::duration(
                "database.credentialRotation.confirmTimeout",
                &spec.confirm_timeout,
            )?,
        })
    }
}

/// The connection Secret as the protocol sees it.
#[derive(Clone, Debug, Default)]
pub struct Connection {
    pub role: Option<String>,
    pub pending: Option<String>,
    pub previous: Option<String>,
    pub published_at: Option<Timestamp>,
    pub generation: u32,
    pub handled: Option<String>,
    /// Fingerprint of the published URL (`stoa_contract::pod::credential_fingerprint`).
    pub fingerprint: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    Running,
    Succeeded,
    Failed {
        message: String,
        finished_ago: Duration,
        /// Pods whose sessions kept the role from expiring.
        remaining: Vec<String>,
    },
}

/// The newest attempt of one kind of Job in the current generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepJob {
    pub attempt: i32,
    pub state: JobState,
}

/// What one ready pod uses: the fingerprint of its URL, `None` if it did not answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCredential {
    pub pod: String,
    pub fingerprint: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do until `due`.
    Idle { due: Timestamp },
    /// Start a rotation to `role` (a new password is generated).
    Begin {
        role: String,
        request: Option<String>,
    },
    /// Create this Job.
    Run {
        kind: JobKind,
        role: String,
        attempt: i32,
    },
    /// A Job is running.
    Waiting { kind: JobKind, role: String },
    /// The role has its password: put it in `url`.
    Publish { role: String },
    /// Pods still use the previous credential.
    Confirming {
        waiting_for: Vec<String>,
        stalled: bool,
    },
    /// The previous role's password is gone: the rotation is complete.
    Expired { role: String },
    /// The last attempt failed; the next one starts in `retry_in`.
    Failed {
        kind: JobKind,
        role: String,
        message: String,
        remaining: Vec<String>,
        retry_in: Duration,
    },
}

/// What the controller saw before deciding.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    pub connection: &'a Connection,
    /// The newest publish and expire Jobs of the current generation.
    pub publish: Option<&'a StepJob>,
    pub expire: Option<&'a StepJob>,
    /// Read only while a published credential awaits confirmation.
    pub pods: &'a [PodCredential],
    /// The Stoa's `stoa.dev/rotate-credentials` annotation.
    pub request: Option<&'a str>,
}

/// The next step of the protocol. Over ~80 lines: the protocol's states in the order
/// they are checked, each a few lines; split, the precedence between them would hide.
pub fn decide(timing: &Timing, group: &str, observed: &Observed<'_>, now: Timestamp) -> Step {
    let Observed {
        connection,
        publish,
        expire,
        pods,
        request,
    } = *observed;
    let job_step = |kind: JobKind, role: &str, job: Option<&StepJob>, done: Step| match job {
        None => Step::Run {
            kind,
            role: role.to_owned(),
            attempt: 1,
        },
        Some(StepJob {
            state: JobState::Running,
            ..
        }) => Step::Waiting {
            kind,
            role: role.to_owned(),
        },
        Some(StepJob {
            state: JobState::Succeeded,
            ..
        }) => done,
        Some(StepJob {
            attempt,
            state:
                JobState::Failed {
                    message,
                    finished_ago,
                    remaining,
                },
        }) => {
            let wait = backoff(*attempt);
            if *finished_ago >= wait {
                Step::Run {
                    kind,
                    role: role.to_owned(),
                    attempt: attempt + 1,
                }
            } else {
                Step::Failed {
                    kind,
                    role: role.to_owned(),
                    message: message.clone(),
                    remaining: remaining.clone(),
                    retry_in: wait.saturating_sub(*finished_ago),
                }
            }
        }
    };
    if let Some(pending) = &connection.pending {
        let done = Step::Publish {
            role: pending.clone(),
        };
        return job_step(JobKind::Publish, pending, publish, done);
    }
    if let Some(previous) = &connection.previous {
        let waiting_for: Vec<String> = pods
            .iter()
            .filter(|p| p.fingerprint.is_none() || p.fingerprint != connection.fingerprint)
            .map(|p| p.pod.clone())
            .collect();
        if !waiting_for.is_empty() {
            let since = connection.published_at.unwrap_or(now);
            return Step::Confirming {
                waiting_for,
                stalled: elapsed(since, now) >= timing.confirm_timeout,
            };
        }
        let done = Step::Expired {
            role: previous.clone(),
        };
        return job_step(JobKind::Expire, previous, expire, done);
    }
    let [a, b] = login_roles(group);
    let requested = request.filter(|r| Some(*r) != connection.handled.as_deref());
    let (role, due) = match (&connection.role, connection.published_at) {
        // Still on the user's credential: move to a managed role at once.
        (None, _) | (Some(_), None) => (a, now),
        (Some(current), Some(at)) => {
            let idle = if *current == a { b } else { a };
            (idle, at.checked_add(timing.every).unwrap_or(Timestamp::MAX))
        }
    };
    if requested.is_some() || now >= due {
        return Step::Begin {
            role,
            request: requested.map(str::to_owned),
        };
    }
    Step::Idle { due }
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO)
}

/// `url` with its user and password replaced (host, port, database and parameters kept).
/// Roles and generated passwords need no escaping (`stoa_contract::credential_rotation`).
pub fn with_credentials(url: &str, user: &str, password: &str) -> Option<String> {
    let (scheme, rest) = url.trim().split_once("://")?;
    let host_and_rest = match rest.split_once('/') {
        Some((authority, path)) => {
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{host}/{path}")
        }
        None => rest.rsplit_once('@').map_or(rest, |(_, h)| h).to_owned(),
    };
    Some(format!("{scheme}://{user}:{password}@{host_and_rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn t(minutes: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + minutes * 60).unwrap()
    }

    fn timing() -> Timing {
        Timing {
            every: 24 * 60 * MIN,
            confirm_timeout: 5 * MIN,
        }
    }

    fn pod(name: &str, fingerprint: &str) -> PodCredential {
        PodCredential {
            pod: name.into(),
            fingerprint: Some(fingerprint.into()),
        }
    }

    fn job(attempt: i32, state: JobState) -> StepJob {
        StepJob { attempt, state }
    }

    fn observed<'a>(
        c: &'a Connection,
        publish: Option<&'a StepJob>,
        expire: Option<&'a StepJob>,
        pods: &'a [PodCredential],
        request: Option<&'a str>,
    ) -> Observed<'a> {
        Observed {
            connection: c,
            publish,
            expire,
            pods,
            request,
        }
    }

    fn decide_at(
        c: &Connection,
        publish: Option<&StepJob>,
        expire: Option<&StepJob>,
        pods: &[PodCredential],
        minutes: i64,
    ) -> Step {
        let seen = observed(c, publish, expire, pods, None);
        decide(&timing(), "g", &seen, t(minutes))
    }

    #[test]
    fn the_first_rotation_moves_off_the_users_credential_at_once() {
        let c = Connection::default();
        assert_eq!(
            decide_at(&c, None, None, &[], 0),
            Step::Begin {
                role: "g_a".into(),
                request: None
            }
        );
    }

    #[test]
    fn a_pending_role_is_published_only_after_its_job_succeeded() {
        let c = Connection {
            role: Some("g_a".into()),
            pending: Some("g_b".into()),
            generation: 2,
            ..Connection::default()
        };
        assert_eq!(
            decide_at(&c, None, None, &[], 0),
            Step::Run {
                kind: JobKind::Publish,
                role: "g_b".into(),
                attempt: 1
            }
        );
        let running = job(1, JobState::Running);
        assert!(matches!(
            decide_at(&c, Some(&running), None, &[], 0),
            Step::Waiting { .. }
        ));
        let failed = job(
            1,
            JobState::Failed {
                message: "connection refused".into(),
                finished_ago: Duration::from_secs(5),
                remaining: vec![],
            },
        );
        assert!(matches!(
            decide_at(&c, Some(&failed), None, &[], 0),
            Step::Failed { retry_in, .. } if retry_in == Duration::from_secs(25)
        ));
        let old_failure = job(
            1,
            JobState::Failed {
                message: "x".into(),
                finished_ago: MIN,
                remaining: vec![],
            },
        );
        assert_eq!(
            decide_at(&c, Some(&old_failure), None, &[], 0),
            Step::Run {
                kind: JobKind::Publish,
                role: "g_b".into(),
                attempt: 2
            }
        );
        let done = job(1, JobState::Succeeded);
        assert_eq!(
            decide_at(&c, Some(&done), None, &[], 0),
            Step::Publish { role: "g_b".into() }
        );
    }

    #[test]
    fn the_old_password_expires_only_after_every_pod_switched() {
        let c = Connection {
            role: Some("g_b".into()),
            previous: Some("g_a".into()),
            published_at: Some(t(0)),
            generation: 2,
            fingerprint: Some("new".into()),
            ..Connection::default()
        };
        let behind = [pod("p1", "new"), pod("p2", "old")];
        assert_eq!(
            decide_at(&c, None, None, &behind, 1),
            Step::Confirming {
                waiting_for: vec!["p2".into()],
                stalled: false
            }
        );
        let silent = [
            pod("p1", "new"),
            PodCredential {
                pod: "p2".into(),
                fingerprint: None,
            },
        ];
        assert_eq!(
            decide_at(&c, None, None, &silent, 6),
            Step::Confirming {
                waiting_for: vec!["p2".into()],
                stalled: true
            }
        );
        let switched = [pod("p1", "new"), pod("p2", "new")];
        assert_eq!(
            decide_at(&c, None, None, &switched, 2),
            Step::Run {
                kind: JobKind::Expire,
                role: "g_a".into(),
                attempt: 1
            }
        );
        let busy = job(
            1,
            JobState::Failed {
                message: "sessions remain".into(),
                finished_ago: Duration::ZERO,
                remaining: vec!["p2".into()],
            },
        );
        assert!(matches!(
            decide_at(&c, None, Some(&busy), &switched, 2),
            Step::Failed { kind: JobKind::Expire, remaining, .. } if remaining == ["p2"]
        ));
        let done = job(1, JobState::Succeeded);
        assert_eq!(
            decide_at(&c, None, Some(&done), &switched, 2),
            Step::Expired { role: "g_a".into() }
        );
    }

    #[test]
    fn rotations_alternate_on_schedule_or_on_request() {
        let c = Connection {
            role: Some("g_a".into()),
            published_at: Some(t(0)),
            generation: 1,
            fingerprint: Some("f".into()),
            ..Connection::default()
        };
        assert_eq!(
            decide_at(&c, None, None, &[], 10),
            Step::Idle { due: t(24 * 60) }
        );
        assert_eq!(
            decide_at(&c, None, None, &[], 24 * 60),
            Step::Begin {
                role: "g_b".into(),
                request: None
            }
        );
        assert_eq!(
            decide(
                &timing(),
                "g",
                &observed(&c, None, None, &[], Some("now")),
                t(10)
            ),
            Step::Begin {
                role: "g_b".into(),
                request: Some("now".into())
            }
        );
        let handled = Connection {
            handled: Some("now".into()),
            ..c
        };
        assert!(matches!(
            decide(
                &timing(),
                "g",
                &observed(&handled, None, None, &[], Some("now")),
                t(10)
            ),
            Step::Idle { .. }
        ));
    }

    #[test]
    fn urls_get_the_new_credential_and_keep_the_rest() {
        assert_eq!(
            with_credentials(
                "postgres://app:old@db.internal:5432/stoa?sslmode=require",
                "g_b",
                "pw"
            )
            .as_deref(),
            Some("postgres://g_b:pw@db.internal:5432/stoa?sslmode=require")
        );
        assert_eq!(
            with_credentials("postgresql://db/stoa", "g_a", "pw").as_deref(),
            Some("postgresql://g_a:pw@db/stoa")
        );
        assert_eq!(with_credentials("not a url", "u", "p"), None);
    }

    #[test]
    fn group_roles_are_valid_and_distinct_per_namespace() {
        let a = group_role("shop", "api");
        assert_eq!(a, "stoa_shop_api");
        assert_ne!(a, group_role("blog", "api"));
        let long = group_role("a-very-long-namespace-name", "and-a-very-long-stoa-name");
        assert!(
            stoa_contract::credential_rotation::valid_role(&long),
            "{long}"
        );
        assert!(long.len() <= 40);
    }
}
