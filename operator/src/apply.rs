//! Writing owned objects: server-side apply only when something changed, never onto an
//! object this Stoa does not own, and deletes guarded by the owner's UID.
//!
//! An unchanged Stoa costs reads only. Each applied object carries the digest of what the
//! operator last applied (`stoa.dev/applied`); an object whose digest matches and whose
//! fields still hold every applied value is left alone. A changed digest means the desired
//! object changed (fields may have been dropped, which only a fresh apply removes: the
//! server-side-apply docs, "Field management"); a drifted field means someone edited it.

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Error, FIELD_MANAGER, Result};

/// The annotation holding the digest of the last applied object.
pub const APPLIED_ANNOTATION: &str = "stoa.dev/applied";

pub fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    }
}

/// Creates an object the operator makes once and never re-applies (a Job, a Secret with
/// generated content). `None` when it already exists: an earlier pass, or another
/// replica, created it (409 AlreadyExists).
pub async fn create_once<K>(api: &Api<K>, object: &K) -> Result<Option<K>>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    match api.create(&post_params(), object).await {
        Ok(created) => Ok(Some(created)),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Replaces `object` conditioned on the `resourceVersion` it carries (the one read): if
/// anyone changed it since, the API server answers 409 Conflict and nothing is written
/// (Kubernetes API conventions, "Concurrency Control and Consistency"). `None` on a
/// conflict: the caller decides again on fresh data.
pub async fn replace_unless_changed<K>(api: &Api<K>, object: &K) -> Result<Option<K>>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    match api
        .replace(&object.name_any(), &post_params(), object)
        .await
    {
        Ok(written) => Ok(Some(written)),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether `meta` names `owner_uid` among its owner references.
pub fn owned_by(object: &impl Resource, owner_uid: &str) -> bool {
    object
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == owner_uid)
}

/// `desired` with its digest annotation (the digest covers everything else).
pub fn stamped<K: Resource + Serialize>(mut desired: K) -> Result<K> {
    let value = serde_json::to_vec(&desired).map_err(Error::Serialize)?;
    let digest: String = Sha256::digest(&value)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    desired
        .meta_mut()
        .annotations
        .get_or_insert_default()
        .insert(APPLIED_ANNOTATION.into(), digest);
    Ok(desired)
}

/// Whether every field of `desired` holds the same value in `actual`, as the API server
/// stores what was applied:
/// - the server's defaults in `actual` are ignored;
/// - an empty value (`""`, `[]`, `{}`, `null`) may be absent: it is omitted when stored;
/// - quantities (`requests`, `limits`, `sizeLimit`) compare by value: `1000m` is `1`;
/// - lists of named elements (containers, volumes, env, ports) compare by name, so
///   elements a mutating webhook added (a mesh sidecar, its volumes) are not a change;
///   other lists element by element, with equal length.
pub fn contains(actual: &Value, desired: &Value) -> bool {
    contains_at(actual, desired, false)
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn name_of(value: &Value) -> Option<&str> {
    value.get("name").and_then(Value::as_str)
}

fn contains_at(actual: &Value, desired: &Value, quantities: bool) -> bool {
    match (actual, desired) {
        (Value::Object(a), Value::Object(d)) => d.iter().all(|(k, dv)| {
            let quantities =
                quantities || matches!(k.as_str(), "requests" | "limits" | "sizeLimit");
            match a.get(k) {
                Some(av) => contains_at(av, dv, quantities),
                None => is_empty(dv),
            }
        }),
        (Value::Array(a), Value::Array(d))
            if !d.is_empty() && d.iter().all(|v| name_of(v).is_some()) =>
        {
            d.iter().all(|dv| {
                a.iter()
                    .find(|av| name_of(av) == name_of(dv))
                    .is_some_and(|av| contains_at(av, dv, quantities))
            })
        }
        (Value::Array(a), Value::Array(d)) => {
            a.len() == d.len()
                && a.iter()
                    .zip(d)
                    .all(|(av, dv)| contains_at(av, dv, quantities))
        }
        (Value::String(a), Value::String(d)) if quantities => crate::quantity::same(a, d),
        (Value::Number(a), Value::String(d)) if quantities => {
            crate::quantity::same(&a.to_string(), d)
        }
        (a, d) => a == d,
    }
}

/// Whether applying `desired` (already [`stamped`]) over `existing` would change nothing.
pub fn up_to_date<K: Resource + Serialize>(existing: &K, desired: &K) -> bool {
    let digest = |o: &K| {
        o.meta()
            .annotations
            .as_ref()
            .and_then(|a| a.get(APPLIED_ANNOTATION))
            .cloned()
    };
    if digest(existing).is_none() || digest(existing) != digest(desired) {
        return false;
    }
    match (
        serde_json::to_value(existing),
        serde_json::to_value(desired),
    ) {
        (Ok(actual), Ok(wanted)) => contains(&actual, &wanted),
        _ => false,
    }
}

/// Applies `desired` unless `existing` already matches it. Refuses to touch an object of
/// the same name that this Stoa does not own (a user's object is never taken over).
pub async fn ensure<K>(
    api: &Api<K>,
    existing: Option<K>,
    desired: K,
    owner_uid: &str,
    kind: &'static str,
) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let desired = stamped(desired)?;
    let name = desired.name_any();
    if let Some(existing) = existing {
        if !owned_by(&existing, owner_uid) {
            return Err(Error::NotOwned { kind, name });
        }
        if up_to_date(&existing, &desired) {
            return Ok(existing);
        }
    }
    Ok(api
        .patch(&name, &apply_params(), &Patch::Apply(&desired))
        .await?)
}

/// Reads the object `desired` names, then [`ensure`]s it.
pub async fn ensure_current<K>(
    api: &Api<K>,
    desired: K,
    owner_uid: &str,
    kind: &'static str,
) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let existing = api.get_opt(&desired.name_any()).await?;
    ensure(api, existing, desired, owner_uid, kind).await
}

/// An optional object: [`ensure_current`] when the spec wants it, otherwise [`remove`] the
/// owned object called `name`.
pub async fn reconcile_optional<K>(
    api: &Api<K>,
    name: &str,
    desired: Option<K>,
    owner_uid: &str,
    kind: &'static str,
) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    match desired {
        Some(object) => drop(ensure_current(api, object, owner_uid, kind).await?),
        None => drop(remove(api, api.get_opt(name).await?, owner_uid).await?),
    }
    Ok(())
}

/// Deletes an object the spec no longer wants, only if this Stoa owns it, with the UID as
/// a precondition (so a same-named object created meanwhile is never deleted). Returns
/// whether something was deleted.
pub async fn remove<K>(api: &Api<K>, existing: Option<K>, owner_uid: &str) -> Result<bool>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let Some(existing) = existing else {
        return Ok(false);
    };
    if !owned_by(&existing, owner_uid) {
        return Ok(false);
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: existing.uid(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match api.delete(&existing.name_any(), &params).await {
        Ok(_) => Ok(true),
        // Gone already, or replaced by another object (precondition failed): not ours.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_defaults_do_not_count_as_changes_but_edits_do() {
        let desired = json!({"spec": {"replicas": 2, "template": {"containers": [{"name": "api", "image": "a"}]}}});
        let defaulted = json!({"spec": {"replicas": 2, "progressDeadlineSeconds": 600,
            "template": {"containers": [{"name": "api", "image": "a", "terminationMessagePath": "/dev/termination-log"}]}}});
        assert!(contains(&defaulted, &desired));
        let edited = json!({"spec": {"replicas": 5, "template": {"containers": [{"name": "api", "image": "a"}]}}});
        assert!(!contains(&edited, &desired));
        let other_image = json!({"spec": {"replicas": 2, "template": {"containers": [{"name": "api", "image": "b"}]}}});
        assert!(!contains(&other_image, &desired));
        let renamed = json!({"spec": {"replicas": 2, "template": {"containers": [{"name": "app", "image": "a"}]}}});
        assert!(!contains(&renamed, &desired));
    }

    #[test]
    fn what_the_api_server_and_webhooks_do_to_an_applied_object_is_not_a_change() {
        let desired = json!({"spec": {"template": {"spec": {
            "containers": [{"name": "api", "image": "a",
                "env": [{"name": "EMPTY", "value": ""}, {"name": "X", "value": "1"}],
                "resources": {"requests": {"cpu": "1000m", "memory": "1024Mi"}, "limits": {"cpu": "0.5"}}}],
            "volumes": [{"name": "keys", "secret": {"secretName": "k"}}],
            "tolerations": []}}}});
        // As stored: quantities canonical, the empty value omitted, a mesh sidecar and its
        // volume injected before ours.
        let stored = json!({"spec": {"template": {"spec": {
            "containers": [
                {"name": "istio-proxy", "image": "istio/proxyv2:1.24"},
                {"name": "api", "image": "a", "env": [{"name": "EMPTY"}, {"name": "X", "value": "1"}],
                 "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "500m"}}}],
            "volumes": [{"name": "istio-envoy", "emptyDir": {}}, {"name": "keys", "secret": {"secretName": "k"}}]}}}});
        assert!(contains(&stored, &desired));

        let more_cpu = json!({"spec": {"template": {"spec": {
            "containers": [{"name": "api", "image": "a", "env": [{"name": "EMPTY"}, {"name": "X", "value": "1"}],
                 "resources": {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"cpu": "500m"}}}],
            "volumes": [{"name": "keys", "secret": {"secretName": "k"}}]}}}});
        assert!(!contains(&more_cpu, &desired), "a real change still counts");
        let env_edited = json!({"spec": {"template": {"spec": {
            "containers": [{"name": "api", "image": "a", "env": [{"name": "EMPTY"}, {"name": "X", "value": "2"}],
                 "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "500m"}}}],
            "volumes": [{"name": "keys", "secret": {"secretName": "k"}}]}}}});
        assert!(!contains(&env_edited, &desired));
    }
}
