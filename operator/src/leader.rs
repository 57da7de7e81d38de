//! Leadership, held or given up: only the holder of the Lease reconciles, and a replica
//! that can no longer be sure it holds it stops (the process exits and its successor takes
//! over), so two replicas never reconcile at once.
//!
//! kube-lease-manager renews the Lease and reports changes on a channel, but when a renewal
//! fails it logs and retries while still reporting "leader": past the Lease's duration
//! another replica takes over, and two would then write the same objects (one scaling a
//! Deployment up, the other down). client-go's leader election stops leading when a
//! renewal has not succeeded within its renew deadline; this does the same by reading the
//! Lease: its holder must be this replica and its `renewTime` younger than
//! `leaseDurationSeconds`.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use tokio::sync::watch;

/// Why this replica stopped leading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lost {
    /// The lease manager reported another holder.
    Replaced,
    /// The lease manager stopped (its task ended or its channel closed): nobody renews.
    ManagerStopped,
    /// The Lease names another holder, or was not renewed within its duration.
    NotRenewed(String),
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::Replaced => write!(f, "another replica holds the lease"),
            Lost::ManagerStopped => {
                write!(f, "the lease manager stopped, so nobody renews the lease")
            }
            Lost::NotRenewed(why) => write!(f, "{why}"),
        }
    }
}

/// The Lease's `leaseDurationSeconds` (15, the manager's setting, if absent).
fn lease_duration(lease: &Lease) -> i32 {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_duration_seconds)
        .unwrap_or(15)
}

/// Whether `lease` still shows `identity` holding it at `now`; the reason when not.
pub fn check_lease(lease: &Lease, identity: &str, now: Timestamp) -> Result<(), String> {
    let spec = lease.spec.as_ref();
    let holder = spec
        .and_then(|s| s.holder_identity.as_deref())
        .unwrap_or("");
    if holder != identity {
        return Err(format!(
            "the lease is held by {holder:?}, not by this replica"
        ));
    }
    let duration = lease_duration(lease);
    let Some(renewed) = spec.and_then(|s| s.renew_time.as_ref()) else {
        return Err("the lease has no renewTime".to_owned());
    };
    let age = now.duration_since(renewed.0);
    if age.as_secs() >= i64::from(duration) {
        return Err(format!(
            "the lease was last renewed {}s ago, past its {duration}s duration",
            age.as_secs()
        ));
    }
    Ok(())
}

/// Resolves once this replica may no longer reconcile: the manager's channel says so or
/// closes, or the Lease (read every `check_every`) shows it was not renewed in time.
/// Reading the Lease failing counts as not renewed once the Lease's duration has passed
/// since the last good reading.
pub async fn lost(
    mut leading: watch::Receiver<bool>,
    leases: Api<Lease>,
    name: &str,
    identity: &str,
    check_every: Duration,
) -> Lost {
    let mut ticker = tokio::time::interval(check_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_good = Timestamp::now();
    let mut duration = 15;
    loop {
        tokio::select! {
            changed = leading.changed() => {
                if changed.is_err() {
                    return Lost::ManagerStopped;
                }
                if !*leading.borrow_and_update() {
                    return Lost::Replaced;
                }
            }
            _ = ticker.tick() => {
                let now = Timestamp::now();
                match leases.get(name).await {
                    Ok(lease) => match check_lease(&lease, identity, now) {
                        Ok(()) => {
                            last_good = now;
                            duration = lease_duration(&lease);
                        }
                        Err(why) => return Lost::NotRenewed(why),
                    },
                    Err(e) => {
                        let unsure_for = now.duration_since(last_good).as_secs();
                        if unsure_for >= i64::from(duration) {
                            return Lost::NotRenewed(format!(
                                "the lease could not be read for {unsure_for}s: {e}"
                            ));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use k8s_openapi::jiff::SignedDuration;

    use super::*;

    fn lease(holder: &str, renewed_ago: i64) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_owned()),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(
                    Timestamp::now()
                        .checked_sub(SignedDuration::from_secs(renewed_ago))
                        .unwrap(),
                )),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    #[test]
    fn a_lease_counts_only_while_renewed_within_its_duration_by_this_replica() {
        let now = Timestamp::now();
        assert_eq!(check_lease(&lease("pod-a", 3), "pod-a", now), Ok(()));
        assert!(
            check_lease(&lease("pod-a", 16), "pod-a", now)
                .unwrap_err()
                .contains("past its 15s duration")
        );
        assert!(
            check_lease(&lease("pod-b", 1), "pod-a", now)
                .unwrap_err()
                .contains("held by \"pod-b\"")
        );
    }
}
