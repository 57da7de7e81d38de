//! Leases: a replica takes several cells of a shared budget in one Redis call and spends
//! them without a round trip.
//!
//! Cells are charged in Redis when leased, so every replica together still never exceeds
//! a budget; what a lease costs is at most its unspent cells, lost when it ends
//! (`LIFE`). A key's lease grows (doubling, up to `max` and to 1/16 of the budget's
//! burst) only while the replica spends its leases before they end, so a client sending
//! at a normal pace is charged one Redis call per request, exactly as without leases.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Decision, Quota};

/// How long leased cells may be spent. Short, so cells do not sit idle in a replica
/// another replica's clients could use.
pub const LIFE: Duration = Duration::from_millis(250);

#[derive(Debug)]
struct Lease {
    /// Cells left to spend locally.
    left: u32,
    ends: Instant,
    /// The budget's remaining cells in Redis after the grant, and when it is full again.
    remaining: u32,
    full_at: Instant,
    /// Cells to ask for next time.
    size: u32,
}

pub struct Leases {
    max: u32,
    by_key: Mutex<HashMap<String, Lease>>,
}

impl Leases {
    pub fn new(max: u32) -> Self {
        Leases {
            max: max.max(1),
            by_key: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lease>> {
        match self.by_key.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Spends one cell of every key's lease if all have one left; `None` otherwise
    /// (nothing spent).
    pub fn spend<const N: usize>(
        &self,
        keys: &[String; N],
        quotas: [Quota; N],
    ) -> Option<[Decision; N]> {
        let now = Instant::now();
        let mut map = self.lock();
        let all = keys.iter().all(|key| {
            map.get(key)
                .is_some_and(|lease| lease.left > 0 && now < lease.ends)
        });
        if !all {
            return None;
        }
        // Every key has a lease (checked under the same lock).
        Some(std::array::from_fn(|i| {
            let Some(lease) = map.get_mut(&keys[i]) else {
                return Decision::refused(quotas[i]);
            };
            lease.left -= 1;
            Decision {
                allowed: true,
                limit: quotas[i].burst,
                remaining: lease.remaining.saturating_add(lease.left),
                reset: lease.full_at.saturating_duration_since(now),
                retry_after: Duration::ZERO,
            }
        }))
    }

    /// How many cells to ask for `key` now: more while its leases run out before they
    /// end, fewer once one ended unspent.
    pub fn want(&self, key: &str, quota: Quota) -> u32 {
        let cap = self.max.min(quota.burst / 16).max(1);
        let now = Instant::now();
        let map = self.lock();
        let cells = match map.get(key) {
            None => 1,
            Some(lease) if now < lease.ends && lease.left == 0 => lease.size.saturating_mul(2),
            Some(lease) if now >= lease.ends && lease.left > 0 => lease.size / 2,
            Some(lease) => lease.size,
        };
        cells.clamp(1, cap)
    }

    /// Records a grant of `granted` cells (one already spent by the request that asked),
    /// with the budget's state in Redis after it.
    pub fn granted(&self, key: String, asked: u32, granted: u32, decision: &Decision) {
        let now = Instant::now();
        let mut map = self.lock();
        // Bound memory: drop leases that have ended.
        if map.len() > 100_000 {
            map.retain(|_, lease| lease.ends > now);
        }
        map.insert(
            key,
            Lease {
                left: granted.saturating_sub(1),
                ends: now + LIFE,
                remaining: decision.remaining,
                full_at: now + decision.reset,
                size: asked,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(burst: u32) -> Quota {
        Quota {
            burst,
            period: Duration::from_secs(60),
        }
    }

    fn decision(remaining: u32) -> Decision {
        Decision {
            allowed: true,
            limit: 0,
            remaining,
            reset: Duration::from_secs(1),
            retry_after: Duration::ZERO,
        }
    }

    #[test]
    fn leases_grow_while_spent_in_time_and_never_past_their_caps() {
        let leases = Leases::new(64);
        let key = "stoa:rl:ip:10.0.0.1".to_owned();
        let mut asked = Vec::new();
        for _ in 0..10 {
            let want = leases.want(&key, quota(1_000_000));
            asked.push(want);
            leases.granted(key.clone(), want, want, &decision(1000));
            while leases
                .spend(std::array::from_ref(&key), [quota(1_000_000)])
                .is_some()
            {}
        }
        assert_eq!(asked, [1, 2, 4, 8, 16, 32, 64, 64, 64, 64]);
        // A small budget is never leased ahead: 1/16 of a burst of 20 is 1.
        let small = "stoa:rl:user:jake".to_owned();
        leases.granted(small.clone(), 1, 1, &decision(19));
        assert_eq!(leases.want(&small, quota(20)), 1);
    }

    #[test]
    fn spending_reports_the_budget_left_including_the_lease() {
        let leases = Leases::new(64);
        let key = "k".to_owned();
        leases.granted(key.clone(), 4, 4, &decision(10));
        for remaining in [12, 11, 10] {
            let [d] = leases
                .spend(std::array::from_ref(&key), [quota(100)])
                .unwrap();
            assert!(d.allowed);
            assert_eq!(d.remaining, remaining);
        }
        assert_eq!(
            leases.spend(std::array::from_ref(&key), [quota(100)]),
            None,
            "spent"
        );
    }

    #[test]
    fn all_keys_or_none() {
        let leases = Leases::new(64);
        let (a, b) = ("a".to_owned(), "b".to_owned());
        leases.granted(a.clone(), 2, 2, &decision(10));
        assert_eq!(leases.spend(&[a.clone(), b.clone()], [quota(100); 2]), None);
        // `a` kept its cell.
        assert!(leases.spend(&[a], [quota(100)]).is_some());
    }
}
