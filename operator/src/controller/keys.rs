//! Signing keys: the key Secret's lifecycle and the rotation protocol
//! ([`key_rotation`](crate::key_rotation)) applied to it — observe the pods while a new
//! key is being confirmed, decide, write the key set, report.

use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::events::EventType;
use stoa_contract::keys::{KEYSET_FILE, KeySetFile, KeyState};

use super::{Context, ReadyPods, Target, event, notice};
use crate::apply;
use crate::crd::{KeyRotationStatus, KeyStatus, Stoa};
use crate::error::{Error, Result};
use crate::key_rotation::{
    self, HANDLED_REQUEST_ANNOTATION, KeySet, PROMOTED_AT_ANNOTATION,
    PROMOTION_CONFIRMED_AT_ANNOTATION, PodKeys, ROTATE_ANNOTATION, Step, Timing,
};
use crate::observe::PodReading;
use crate::resources;

/// How often a rotation that waits for pods looks again (the kubelet refreshes mounted
/// Secrets on its sync period, about a minute by default).
const CONFIRM_POLL: Duration = Duration::from_secs(5);

/// What a rotation pass leaves for the rest of the reconcile.
pub(super) struct Rotation {
    pub secret: Secret,
    pub status: KeyRotationStatus,
    /// `(reason, message)` for `Degraded` while the rotation is stalled.
    pub stalled: Option<String>,
    pub requeue: Duration,
}

/// Makes sure the signing-key Secret exists. A Secret deleted by hand is recreated with a
/// new key set, and a Warning says what that means for issued tokens.
pub(super) async fn ensure_key_secret(
    ctx: &Context,
    stoa: &Stoa,
    target: &Target,
) -> Result<Secret> {
    let api: Api<Secret> = target.api(&ctx.client);
    let name = &target.names.keys;
    if let Some(existing) = owned_secret(&api, name, target).await? {
        return Ok(existing);
    }
    let mut keyset = stoa_contract::keys::generate_keyset();
    let now = Timestamp::now();
    for key in &mut keyset.keys {
        key.created_at.get_or_insert_with(|| now.to_string());
    }
    let mut secret = resources::key_secret(stoa, &keyset)?;
    secret
        .annotations_mut()
        .insert(PROMOTED_AT_ANNOTATION.into(), now.to_string());
    // A request present at creation is satisfied by the fresh key set.
    if let Some(request) = stoa.annotations().get(ROTATE_ANNOTATION) {
        secret
            .annotations_mut()
            .insert(HANDLED_REQUEST_ANNOTATION.into(), request.clone());
    }
    match apply::create_once(&api, &secret).await? {
        Some(created) => {
            let existed_before = stoa.status.as_ref().is_some_and(|s| !s.keys.is_empty());
            let notice = if existed_before {
                notice(
                    EventType::Warning,
                    "KeySetRecreated",
                    format!(
                        "Secret {name} was deleted; created a new signing key set. Access tokens \
                         issued before are now invalid: clients must sign in or refresh again"
                    ),
                )
            } else {
                notice(
                    EventType::Normal,
                    "KeySetCreated",
                    format!("created signing key set in Secret {name}"),
                )
            };
            event(ctx, stoa, notice).await;
            Ok(created)
        }
        // Another reconcile won the race: use its Secret.
        None => Ok(api.get(name).await?),
    }
}

/// Makes sure the Secret with the MFA key set exists (created once, never rewritten: see
/// `resources::mfa_key_secret`). A Secret deleted by hand is recreated (with a new key).
pub(super) async fn ensure_mfa_key_secret(
    ctx: &Context,
    stoa: &Stoa,
    target: &Target,
) -> Result<()> {
    let api: Api<Secret> = target.api(&ctx.client);
    let name = &target.names.mfa_keys;
    if owned_secret(&api, name, target).await?.is_some() {
        return Ok(());
    }
    let secret = resources::mfa_key_secret(stoa, &stoa_contract::mfa_keys::generate_mfa_keyset())?;
    if apply::create_once(&api, &secret).await?.is_some() {
        // The operator cannot tell a first creation from a Secret deleted by hand (an
        // upgraded Stoa has signing keys but no MFA Secret yet), so the event says both.
        let message = format!(
            "created the MFA key set in Secret {name}. If a Secret of that name was deleted, \
             second factors enrolled under it cannot be read: restore it from a backup, or \
             reset MFA for those users (stoa-api admin reset-mfa)"
        );
        event(
            ctx,
            stoa,
            notice(EventType::Normal, "MfaKeySetCreated", message),
        )
        .await;
    }
    Ok(())
}

/// The Secret `name` if it exists; an error if it does but this Stoa does not own it.
async fn owned_secret(api: &Api<Secret>, name: &str, target: &Target) -> Result<Option<Secret>> {
    match api.get_opt(name).await? {
        Some(existing) if !apply::owned_by(&existing, &target.uid) => Err(Error::NotOwned {
            kind: "Secret",
            name: name.to_owned(),
        }),
        found => Ok(found),
    }
}

fn key_set_file(secret: &Secret) -> Option<KeySetFile> {
    let bytes = secret.data.as_ref()?.get(KEYSET_FILE)?;
    serde_json::from_slice(&bytes.0).ok()
}

fn promoted_at(secret: &Secret) -> Option<Timestamp> {
    annotated_time(secret, PROMOTED_AT_ANNOTATION)
}

fn annotated_time(secret: &Secret, annotation: &str) -> Option<Timestamp> {
    secret
        .annotations()
        .get(annotation)
        .and_then(|t| t.parse().ok())
}

/// The keys in the Secret, with their states and times, for the status.
pub(super) fn key_status(secret: &Secret) -> Vec<KeyStatus> {
    let Some(file) = key_set_file(secret) else {
        return Vec::new();
    };
    let promoted = promoted_at(secret).map(|t| t.to_string());
    file.keys
        .into_iter()
        .map(|k| KeyStatus {
            since: match k.state {
                KeyState::Next => k.created_at.clone(),
                KeyState::Active => promoted.clone().or_else(|| k.created_at.clone()),
                KeyState::Retiring => promoted.clone(),
            },
            kid: k.kid,
            state: k.state.as_str().to_owned(),
            created_at: k.created_at,
        })
        .collect()
}

/// One step of the rotation protocol for this Stoa.
pub(super) async fn rotate_keys(
    ctx: &Context,
    stoa: &Stoa,
    target: &Target,
    secret: Secret,
    pods: &ReadyPods<'_>,
) -> Result<Rotation> {
    let timing = Timing::of(stoa).map_err(Error::InvalidSpec)?;
    let file = key_set_file(&secret).ok_or_else(|| {
        Error::InvalidSpec(format!(
            "Secret {} holds no valid {KEYSET_FILE}; delete it to have a new key set created",
            target.names.keys
        ))
    })?;
    let set = key_set(&secret, &file.keys);
    let request = stoa
        .annotations()
        .get(ROTATE_ANNOTATION)
        .map(String::as_str);
    let pods = if set.confirming() {
        observe_pods(pods).await?
    } else {
        Vec::new()
    };
    let now = Timestamp::now();
    let step = key_rotation::decide(&timing, &set, request, &pods, now);
    let previous = stoa.status.as_ref().and_then(|s| s.key_rotation.as_ref());

    let mut secret = secret;
    if step.writes() {
        let keys = key_rotation::apply(&step, &file.keys, now);
        let changes = step_annotations(&step, now);
        match write_key_set(ctx, target, &secret, keys, &changes).await? {
            Some(written) => {
                secret = written;
                record_step(ctx, stoa, &step, &file, &timing, pods.len()).await;
            }
            // Someone else changed the Secret since it was read: decide again on fresh data.
            None => {
                return Ok(Rotation {
                    status: previous.cloned().unwrap_or_default(),
                    secret,
                    stalled: None,
                    requeue: Duration::from_secs(1),
                });
            }
        }
    }

    let after = key_set_file(&secret).unwrap_or(file);
    let status = rotation_status(&step, &key_set(&secret, &after.keys), &timing);
    let stalled = stall_message(&step, &timing);
    // Reported once, when the rotation enters the stall.
    if let Some(message) = &stalled
        && previous.is_none_or(|p| p.phase != "Stalled")
    {
        ctx.metrics.observe_rotation("keys", "stalled");
        event(
            ctx,
            stoa,
            notice(EventType::Warning, "RotationStalled", message.clone()),
        )
        .await;
    }
    Ok(Rotation {
        secret,
        status,
        stalled,
        requeue: look_again(&step, now),
    })
}

/// The annotations a step records on the key Secret beside the key set.
fn step_annotations(step: &Step, now: Timestamp) -> Vec<(&'static str, String)> {
    let mut changes = Vec::new();
    if let Step::Add {
        request: Some(request),
        ..
    } = step
    {
        changes.push((HANDLED_REQUEST_ANNOTATION, request.clone()));
    }
    if matches!(step, Step::Promote { .. }) {
        changes.push((PROMOTED_AT_ANNOTATION, now.to_string()));
    }
    if matches!(step, Step::PromotionConfirmed { .. }) {
        changes.push((PROMOTION_CONFIRMED_AT_ANNOTATION, now.to_string()));
    }
    changes
}

fn look_again(step: &Step, now: Timestamp) -> Duration {
    match step {
        _ if step.writes() => Duration::from_secs(1),
        Step::Confirming { .. } | Step::ConfirmingPromotion { .. } => CONFIRM_POLL,
        Step::Holding { until } | Step::Idle { due: until } => until_then(now, *until),
        _ => CONFIRM_POLL,
    }
}

/// The key Secret as the protocol reads it.
fn key_set<'a>(secret: &'a Secret, keys: &'a [stoa_contract::keys::KeyEntry]) -> KeySet<'a> {
    KeySet {
        keys,
        promoted_at: promoted_at(secret),
        promotion_confirmed_at: annotated_time(secret, PROMOTION_CONFIRMED_AT_ANNOTATION),
        handled: secret
            .annotations()
            .get(HANDLED_REQUEST_ANNOTATION)
            .map(String::as_str),
    }
}

/// Why the rotation is stalled, for `Degraded`, if it is: pods that have not loaded the
/// next key, or that still sign with the retiring one.
fn stall_message(step: &Step, timing: &Timing) -> Option<String> {
    let after = humantime::format_duration(timing.confirm_timeout);
    match step {
        Step::Confirming {
            kid,
            waiting_for,
            stalled: true,
            ..
        } => Some(format!(
            "signing key {kid} is not loaded by {} after {after}: it will not sign until every \
             ready pod has it (check that the key Secret is mounted and the pods' \
             stoa_keyset_reload_errors)",
            waiting_for.join(", "),
        )),
        Step::ConfirmingPromotion {
            kid,
            waiting_for,
            stalled: true,
            ..
        } => Some(format!(
            "{} still sign with the retiring key after {after}: key {kid} was promoted, but \
             they have not reloaded the key set (the retiring key stays until they do; \
             check that the key Secret is mounted and the pods' stoa_keyset_reload_errors)",
            waiting_for.join(", "),
        )),
        _ => None,
    }
}

/// The ready pods of this Stoa and the keys each has loaded.
async fn observe_pods(pods: &ReadyPods<'_>) -> Result<Vec<PodKeys>> {
    Ok(pods
        .get()
        .await?
        .iter()
        .map(|PodReading { pod, state }| PodKeys {
            pod: pod.clone(),
            loaded: state
                .as_ref()
                .map(|s| s.keys.iter().map(|k| k.kid.clone()).collect()),
            active: state.as_ref().and_then(|s| {
                s.keys
                    .iter()
                    .find(|k| k.state == KeyState::Active)
                    .map(|k| k.kid.clone())
            }),
        })
        .collect())
}

/// Replaces the key set, conditioned on the Secret's `resourceVersion` as read
/// ([`apply::replace_unless_changed`]). `None` on conflict.
async fn write_key_set(
    ctx: &Context,
    target: &Target,
    read: &Secret,
    keys: Vec<stoa_contract::keys::KeyEntry>,
    annotations: &[(&str, String)],
) -> Result<Option<Secret>> {
    let json = serde_json::to_vec_pretty(&KeySetFile { keys }).map_err(Error::Serialize)?;
    let mut secret = read.clone();
    secret
        .data
        .get_or_insert_default()
        .insert(KEYSET_FILE.to_owned(), ByteString(json));
    for (name, value) in annotations {
        secret
            .annotations_mut()
            .insert((*name).to_owned(), value.clone());
    }
    apply::replace_unless_changed(&target.api::<Secret>(&ctx.client), &secret).await
}

async fn record_step(
    ctx: &Context,
    stoa: &Stoa,
    step: &Step,
    before: &KeySetFile,
    timing: &Timing,
    pods: usize,
) {
    let active = before
        .keys
        .iter()
        .find(|k| k.state == KeyState::Active)
        .map_or("", |k| k.kid.as_str());
    let (reason, note) = match step {
        Step::Add { request, .. } => {
            ctx.metrics.observe_rotation("keys", "started");
            let why = match request {
                Some(value) => format!("requested by {ROTATE_ANNOTATION}={value}"),
                None => "scheduled".to_owned(),
            };
            (
                "KeyRotationStarted",
                format!(
                    "added a new signing key as next ({why}); it signs once every ready pod has \
                     loaded it"
                ),
            )
        }
        Step::Promote { kid, waited } => {
            ctx.metrics.observe_rotation("keys", "promoted");
            ctx.metrics.observe_confirmation("keys", *waited);
            (
                "KeyPromoted",
                format!(
                    "signing key {kid} is promoted ({pods} ready pods loaded it in {}); {active} \
                     verifies until every ready pod signs with {kid}, then for {}",
                    humantime::format_duration(Duration::from_secs(waited.as_secs())),
                    humantime::format_duration(timing.retire_after)
                ),
            )
        }
        Step::PromotionConfirmed {
            kid,
            waited,
            retire_at,
        } => (
            "KeyPromotionConfirmed",
            format!(
                "every ready pod signs with {kid} ({} after the promotion); {active} verifies \
                 until {retire_at}",
                humantime::format_duration(Duration::from_secs(waited.as_secs()))
            ),
        ),
        Step::Retire { kids } => {
            ctx.metrics.observe_rotation("keys", "retired");
            (
                "KeyRetired",
                format!(
                    "removed signing key {}: no unexpired token carries it",
                    kids.join(", ")
                ),
            )
        }
        _ => return,
    };
    event(ctx, stoa, notice(EventType::Normal, reason, note)).await;
}

/// The status for the step just taken, over the key set after it.
fn rotation_status(step: &Step, set: &KeySet<'_>, timing: &Timing) -> KeyRotationStatus {
    let active_kid = set
        .keys
        .iter()
        .find(|k| k.state == KeyState::Active)
        .map(|k| k.kid.clone());
    let active_since = set.active_since();
    let at = |d: Duration| active_since.and_then(|t| t.checked_add(d).ok());
    let (phase, next_step_at, waiting_for, message) = match step {
        Step::Idle { due } => ("Idle", Some(*due), Vec::new(), None),
        Step::Retire { .. } => ("Idle", at(timing.every), Vec::new(), None),
        Step::Add { .. } => (
            "Confirming",
            None,
            Vec::new(),
            Some("added a new key; waiting for every ready pod to load it".to_owned()),
        ),
        Step::Confirming {
            kid,
            waiting_for,
            stalled,
            ..
        } => (
            if *stalled { "Stalled" } else { "Confirming" },
            None,
            waiting_for.clone(),
            Some(format!("waiting for pods to load key {kid}")),
        ),
        Step::Promote { .. } => (
            "Retiring",
            None,
            Vec::new(),
            Some("promoted; waiting for every ready pod to sign with the new key".to_owned()),
        ),
        Step::ConfirmingPromotion {
            kid,
            waiting_for,
            stalled,
            ..
        } => (
            if *stalled { "Stalled" } else { "Retiring" },
            None,
            waiting_for.clone(),
            Some(format!("waiting for pods to sign with key {kid}")),
        ),
        Step::PromotionConfirmed { retire_at, .. } => {
            ("Retiring", Some(*retire_at), Vec::new(), None)
        }
        Step::Holding { until } => ("Retiring", Some(*until), Vec::new(), None),
    };
    KeyRotationStatus {
        phase: phase.to_owned(),
        active_kid,
        active_since: active_since.map(|t| t.to_string()),
        next_step_at: next_step_at.map(|t| t.to_string()),
        waiting_for,
        message,
    }
}

fn until_then(now: Timestamp, then: Timestamp) -> Duration {
    Duration::try_from(then.duration_since(now))
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_secs(1))
}
