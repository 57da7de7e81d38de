//! Protocol 2: signing keys rotate, and every pod confirms each key before it signs.
//!
//! A pure decision over the key set in the Secret, two annotations on that Secret (when
//! the active key was promoted; which rotation request was last handled), the Stoa's
//! `stoa.dev/rotate-keys` annotation, and what each ready pod reports it has loaded
//! (`stoa_contract::pod`). The controller observes, calls [`decide`], writes the key set
//! that [`apply`] returns, and reports.
//!
//! One rotation, one step per decision:
//! 1. **Add**: every `spec.auth.keyRotation.every` since the last promotion, or at once when
//!    the Stoa's `stoa.dev/rotate-keys` annotation changes, a new key joins as `next`
//!    (verifies only).
//! 2. **Confirm**: wait until every ready pod reports the `next` key loaded. A pod that
//!    does not answer is not confirmed. Past `confirmTimeout` the rotation is *stalled*
//!    (reported, with the pods' names) but never forced: a key no pod can verify would
//!    break every token it signs.
//! 3. **Promote**: `next` → `active`, `active` → `retiring`. A pod that has not yet seen
//!    the promotion still verifies the new key (it knows it as `next`), and every pod
//!    still verifies the old one, so no token fails in between.
//! 4. **Confirm the promotion**: a pod signs with the old key until it reloads the promoted
//!    key set (the kubelet refreshes mounted Secrets on its sync period, a minute or more),
//!    so tokens signed with it keep being issued after the promotion is written. Wait until
//!    every ready pod reports the new key as its active one, and record when.
//! 5. **Retire**: once the access-token lifetime plus the largest allowed clock leeway has
//!    passed since every pod signs with the new key, no unexpired token carries the
//!    retiring key: remove it.
//!
//! A request that arrives while a key is retiring waits for the removal (one rotation at
//! a time keeps the key set at three keys at most).

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use stoa_contract::keys::{KeyEntry, KeyState};

use crate::crd::{self, Stoa};

/// On the Stoa: changing its value asks for a rotation now.
pub const ROTATE_ANNOTATION: &str = "stoa.dev/rotate-keys";
/// On the key Secret: when the active key was promoted (RFC 3339).
pub const PROMOTED_AT_ANNOTATION: &str = "stoa.dev/key-promoted-at";
/// On the key Secret: when every ready pod was seen signing with the active key (RFC 3339);
/// the retire clock starts here. A time before `PROMOTED_AT_ANNOTATION` belongs to an
/// earlier rotation.
pub const PROMOTION_CONFIRMED_AT_ANNOTATION: &str = "stoa.dev/key-promotion-confirmed-at";
/// On the key Secret: the last `stoa.dev/rotate-keys` value a rotation was started for.
pub const HANDLED_REQUEST_ANNOTATION: &str = "stoa.dev/rotate-keys-handled";

/// The timing of a Stoa's rotations, parsed from its spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub every: Duration,
    pub confirm_timeout: Duration,
    /// How long a retiring key keeps verifying: the access-token lifetime plus the
    /// largest leeway stoa-api accepts (tokens verify until `exp` + leeway).
    pub retire_after: Duration,
}

impl Timing {
    pub fn of(stoa: &Stoa) -> Result<Timing, String> {
        let every = crd::duration("auth.keyRotation.every", &stoa.spec.auth.key_rotation.every)?;
        let access = crd::duration("auth.accessTokenTtl", &stoa.spec.auth.access_token_ttl)?;
        let confirm_timeout = crd::duration(
            "auth.keyRotation.confirmTimeout",
            &stoa.spec.auth.key_rotation.confirm_timeout,
        )?;
        let retire_after = access + stoa_contract::env::MAX_JWT_LEEWAY;
        if every <= retire_after {
            return Err(format!(
                "auth.keyRotation.every ({}) must be longer than auth.accessTokenTtl plus {} of \
                 clock leeway ({}): a key must outlive the tokens it signed",
                stoa.spec.auth.key_rotation.every,
                humantime::format_duration(stoa_contract::env::MAX_JWT_LEEWAY),
                humantime::format_duration(retire_after),
            ));
        }
        Ok(Timing {
            every,
            confirm_timeout,
            retire_after,
        })
    }
}

/// The key Secret as the protocol sees it.
#[derive(Clone, Copy, Debug)]
pub struct KeySet<'a> {
    pub keys: &'a [KeyEntry],
    pub promoted_at: Option<Timestamp>,
    /// When every ready pod was seen signing with the active key.
    pub promotion_confirmed_at: Option<Timestamp>,
    /// The last rotation request started.
    pub handled: Option<&'a str>,
}

impl KeySet<'_> {
    fn with_state(&self, state: KeyState) -> impl Iterator<Item = &KeyEntry> {
        self.keys.iter().filter(move |k| k.state == state)
    }

    /// Since when the active key signs: its promotion, else its creation.
    pub fn active_since(&self) -> Option<Timestamp> {
        self.promoted_at.or_else(|| {
            self.with_state(KeyState::Active)
                .next()
                .and_then(created_at)
        })
    }

    /// When every ready pod signed with the active key, for this promotion.
    pub fn promotion_confirmed(&self) -> Option<Timestamp> {
        self.promotion_confirmed_at.filter(|confirmed| {
            self.promoted_at
                .is_none_or(|promoted| *confirmed >= promoted)
        })
    }

    /// Whether the next decision needs to know what the pods have loaded.
    pub fn confirming(&self) -> bool {
        self.with_state(KeyState::Next).next().is_some()
            || (self.with_state(KeyState::Retiring).next().is_some()
                && self.promotion_confirmed().is_none())
    }
}

pub fn created_at(key: &KeyEntry) -> Option<Timestamp> {
    key.created_at.as_deref().and_then(|t| t.parse().ok())
}

/// What one ready pod reported: the kids it has loaded, or `None` if it did not answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodKeys {
    pub pod: String,
    pub loaded: Option<Vec<String>>,
    /// The kid it signs with (`None` if it did not answer).
    pub active: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do until `due` (the next scheduled rotation).
    Idle { due: Timestamp },
    /// Start a rotation: add a `next` key. `request` is the annotation value it handles.
    Add {
        request: Option<String>,
        scheduled: bool,
    },
    /// The `next` key is not loaded everywhere yet.
    Confirming {
        kid: String,
        waiting_for: Vec<String>,
        since: Timestamp,
        stalled: bool,
    },
    /// Every ready pod has `kid`: make it the signing key.
    Promote { kid: String, waited: Duration },
    /// Some ready pods still sign with the retiring key (they have not reloaded the
    /// promoted key set yet): its retire clock has not started.
    ConfirmingPromotion {
        kid: String,
        waiting_for: Vec<String>,
        since: Timestamp,
        stalled: bool,
    },
    /// Every ready pod signs with `kid` now: the retire clock starts, to end at `retire_at`.
    PromotionConfirmed {
        kid: String,
        waited: Duration,
        retire_at: Timestamp,
    },
    /// These keys signed no token that is still valid: remove them.
    Retire { kids: Vec<String> },
    /// Retiring keys still verify tokens until `until`.
    Holding { until: Timestamp },
}

impl Step {
    /// Whether applying this step changes the key set.
    pub fn writes(&self) -> bool {
        matches!(
            self,
            Step::Add { .. }
                | Step::Promote { .. }
                | Step::PromotionConfirmed { .. }
                | Step::Retire { .. }
        )
    }
}

/// The next step of the protocol. `pods` is only read while a `next` key is being
/// confirmed ([`KeySet::confirming`]).
pub fn decide(
    timing: &Timing,
    set: &KeySet<'_>,
    request: Option<&str>,
    pods: &[PodKeys],
    now: Timestamp,
) -> Step {
    let retiring: Vec<String> = set
        .with_state(KeyState::Retiring)
        .map(|k| k.kid.clone())
        .collect();
    let active_since = set.active_since().unwrap_or(now);
    if !retiring.is_empty() {
        let Some(confirmed) = set.promotion_confirmed() else {
            let kid = set
                .with_state(KeyState::Active)
                .next()
                .map(|k| k.kid.clone())
                .unwrap_or_default();
            let since = set.promoted_at.unwrap_or(active_since);
            let waiting_for: Vec<String> = pods
                .iter()
                .filter(|p| p.active.as_deref() != Some(kid.as_str()))
                .map(|p| p.pod.clone())
                .collect();
            if waiting_for.is_empty() {
                return Step::PromotionConfirmed {
                    kid,
                    waited: elapsed(since, now),
                    retire_at: add(now, timing.retire_after),
                };
            }
            return Step::ConfirmingPromotion {
                kid,
                stalled: elapsed(since, now) >= timing.confirm_timeout,
                waiting_for,
                since,
            };
        };
        let retire_at = add(confirmed, timing.retire_after);
        if now >= retire_at {
            return Step::Retire { kids: retiring };
        }
        return Step::Holding { until: retire_at };
    }
    if let Some(next) = set.with_state(KeyState::Next).next() {
        let since = created_at(next).unwrap_or(now);
        let waiting_for: Vec<String> = pods
            .iter()
            .filter(|p| {
                !p.loaded
                    .as_ref()
                    .is_some_and(|kids| kids.contains(&next.kid))
            })
            .map(|p| p.pod.clone())
            .collect();
        if waiting_for.is_empty() {
            return Step::Promote {
                kid: next.kid.clone(),
                waited: elapsed(since, now),
            };
        }
        return Step::Confirming {
            kid: next.kid.clone(),
            stalled: elapsed(since, now) >= timing.confirm_timeout,
            waiting_for,
            since,
        };
    }
    let requested = request.filter(|r| Some(*r) != set.handled);
    let due = add(active_since, timing.every);
    if requested.is_some() || now >= due {
        return Step::Add {
            request: requested.map(str::to_owned),
            scheduled: requested.is_none(),
        };
    }
    Step::Idle { due }
}

/// The key set after `step` (unchanged for steps that only wait).
pub fn apply(step: &Step, keys: &[KeyEntry], now: Timestamp) -> Vec<KeyEntry> {
    match step {
        Step::Add { .. } => {
            let mut next = stoa_contract::keys::generate_key(KeyState::Next);
            next.created_at = Some(now.to_string());
            keys.iter().cloned().chain([next]).collect()
        }
        Step::Promote { kid, .. } => keys
            .iter()
            .cloned()
            .map(|mut k| {
                k.state = match k.state {
                    KeyState::Next if k.kid == *kid => KeyState::Active,
                    KeyState::Active => KeyState::Retiring,
                    other => other,
                };
                k
            })
            .collect(),
        Step::Retire { kids } => keys
            .iter()
            .filter(|k| !kids.contains(&k.kid))
            .cloned()
            .collect(),
        Step::Idle { .. }
        | Step::Confirming { .. }
        | Step::Holding { .. }
        | Step::ConfirmingPromotion { .. }
        | Step::PromotionConfirmed { .. } => keys.to_vec(),
    }
}

fn add(at: Timestamp, d: Duration) -> Timestamp {
    at.checked_add(d).unwrap_or(Timestamp::MAX)
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn timing() -> Timing {
        Timing {
            every: 24 * 60 * MIN,
            confirm_timeout: 5 * MIN,
            retire_after: 20 * MIN,
        }
    }

    fn t(minutes: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + minutes * 60).unwrap()
    }

    fn key(kid: &str, state: KeyState, created: i64) -> KeyEntry {
        KeyEntry {
            kid: kid.into(),
            state,
            algorithm: "EdDSA".into(),
            created_at: Some(t(created).to_string()),
            private_key_pem: String::new(),
        }
    }

    fn pod(name: &str, kids: &[&str]) -> PodKeys {
        PodKeys {
            pod: name.into(),
            loaded: Some(kids.iter().map(|k| (*k).to_owned()).collect()),
            active: kids.first().map(|k| (*k).to_owned()),
        }
    }

    fn set(keys: &[KeyEntry], promoted_at: Option<i64>) -> KeySet<'_> {
        KeySet {
            keys,
            promoted_at: promoted_at.map(t),
            promotion_confirmed_at: None,
            handled: None,
        }
    }

    #[test]
    fn a_fresh_key_set_waits_for_its_schedule_then_adds_a_next_key() {
        let keys = [key("a", KeyState::Active, 0)];
        let s = set(&keys, None);
        assert_eq!(
            decide(&timing(), &s, None, &[], t(60)),
            Step::Idle { due: t(24 * 60) }
        );
        assert_eq!(
            decide(&timing(), &s, None, &[], t(24 * 60)),
            Step::Add {
                request: None,
                scheduled: true
            }
        );
    }

    #[test]
    fn a_changed_request_annotation_rotates_at_once_and_only_once() {
        let keys = [key("a", KeyState::Active, 0)];
        let mut s = set(&keys, None);
        assert_eq!(
            decide(&timing(), &s, Some("2026-11-25"), &[], t(1)),
            Step::Add {
                request: Some("2026-11-25".into()),
                scheduled: false
            }
        );
        s.handled = Some("2026-11-25");
        assert!(matches!(
            decide(&timing(), &s, Some("2026-11-25"), &[], t(1)),
            Step::Idle { .. }
        ));
    }

    #[test]
    fn the_next_key_is_promoted_only_when_every_ready_pod_has_loaded_it() {
        let keys = [key("a", KeyState::Active, 0), key("b", KeyState::Next, 100)];
        let s = set(&keys, None);
        assert!(s.confirming());
        let partial = [pod("p1", &["a", "b"]), pod("p2", &["a"])];
        assert_eq!(
            decide(&timing(), &s, None, &partial, t(101)),
            Step::Confirming {
                kid: "b".into(),
                waiting_for: vec!["p2".into()],
                since: t(100),
                stalled: false
            }
        );
        let all = [pod("p1", &["a", "b"]), pod("p2", &["b", "a"])];
        assert_eq!(
            decide(&timing(), &s, None, &all, t(102)),
            Step::Promote {
                kid: "b".into(),
                waited: 2 * MIN
            }
        );
    }

    #[test]
    fn a_pod_that_never_answers_stalls_the_rotation_instead_of_breaking_tokens() {
        let keys = [key("a", KeyState::Active, 0), key("b", KeyState::Next, 100)];
        let s = set(&keys, None);
        let silent = [
            pod("p1", &["a", "b"]),
            PodKeys {
                pod: "p2".into(),
                loaded: None,
                active: None,
            },
        ];
        for minutes in [101, 104, 105, 600] {
            match decide(&timing(), &s, None, &silent, t(minutes)) {
                Step::Confirming {
                    waiting_for,
                    stalled,
                    ..
                } => {
                    assert_eq!(waiting_for, ["p2"]);
                    assert_eq!(stalled, minutes >= 105, "at {minutes}");
                }
                other => panic!("at {minutes}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_retire_clock_starts_when_every_pod_signs_with_the_promoted_key() {
        let keys = [
            key("a", KeyState::Retiring, 0),
            key("b", KeyState::Active, 100),
        ];
        let s = set(&keys, Some(110));
        assert!(
            s.confirming(),
            "the pods are read until the promotion is confirmed"
        );
        // p2 has not reloaded the key set: it still signs with `a`, issuing tokens that
        // live a token lifetime from now.
        let lagging = [pod("p1", &["b", "a"]), pod("p2", &["a", "b"])];
        assert_eq!(
            decide(&timing(), &s, None, &lagging, t(112)),
            Step::ConfirmingPromotion {
                kid: "b".into(),
                waiting_for: vec!["p2".into()],
                since: t(110),
                stalled: false
            }
        );
        // Past the promotion's own deadline the key would have gone; it stays.
        assert!(matches!(
            decide(&timing(), &s, None, &lagging, t(131)),
            Step::ConfirmingPromotion { stalled: true, .. }
        ));
        let all = [pod("p1", &["b", "a"]), pod("p2", &["b", "a"])];
        assert_eq!(
            decide(&timing(), &s, None, &all, t(132)),
            Step::PromotionConfirmed {
                kid: "b".into(),
                waited: 22 * MIN,
                retire_at: t(152)
            }
        );
        // A confirmation from an earlier rotation does not count.
        let mut stale = set(&keys, Some(110));
        stale.promotion_confirmed_at = Some(t(50));
        assert!(stale.confirming());
    }

    #[test]
    fn the_retiring_key_goes_after_the_token_lifetime_and_requests_wait_for_it() {
        let keys = [
            key("a", KeyState::Retiring, 0),
            key("b", KeyState::Active, 100),
        ];
        let mut s = set(&keys, Some(110));
        s.promotion_confirmed_at = Some(t(110));
        assert_eq!(
            decide(&timing(), &s, Some("now"), &[], t(120)),
            Step::Holding { until: t(130) }
        );
        assert_eq!(
            decide(&timing(), &s, Some("now"), &[], t(130)),
            Step::Retire {
                kids: vec!["a".into()]
            }
        );
    }

    #[test]
    fn applying_the_steps_walks_a_full_rotation() {
        let first = stoa_contract::keys::generate_key(KeyState::Active);
        let a = first.kid.clone();
        let keys = vec![first];
        let added = apply(
            &Step::Add {
                request: None,
                scheduled: true,
            },
            &keys,
            t(5),
        );
        assert_eq!(added.len(), 2);
        let next = added[1].clone();
        assert_eq!(next.state, KeyState::Next);
        assert_eq!(created_at(&next), Some(t(5)));
        let promoted = apply(
            &Step::Promote {
                kid: next.kid.clone(),
                waited: MIN,
            },
            &added,
            t(6),
        );
        let states: Vec<_> = promoted.iter().map(|k| (k.kid.as_str(), k.state)).collect();
        assert_eq!(
            states,
            [
                (a.as_str(), KeyState::Retiring),
                (next.kid.as_str(), KeyState::Active)
            ]
        );
        let retired = apply(&Step::Retire { kids: vec![a] }, &promoted, t(30));
        assert_eq!(retired.len(), 1);
        assert_eq!(retired[0].kid, next.kid);
        // Each result is a key set stoa-api accepts.
        for keys in [added, promoted, retired] {
            stoa_contract::keys::KeySetFile { keys }.parse().unwrap();
        }
    }
}
