//! Rate limiting with GCRA (the generic cell rate algorithm).
//!
//! In Redis, one Lua script call per decision (atomic, one round trip), shared by every
//! replica; a busy key's cells are leased a few at a time (`lease`), so most of its
//! requests need no round trip. When Redis is not configured or not answering, the same
//! algorithm runs in process, so limits keep holding (per replica) instead of failing
//! open or closed.

mod lease;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Script;

use crate::kv::Kv;
pub use crate::metrics::Bucket;

pub use crate::config::Quota;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// When denied: until the next request would be allowed.
    pub retry_after: Duration,
}

impl Decision {
    fn refused(quota: Quota) -> Self {
        Decision {
            allowed: false,
            limit: quota.burst,
            remaining: 0,
            reset: Duration::ZERO,
            retry_after: Duration::from_millis(quota.interval_ms()),
        }
    }
}

/// GCRA: `tat` is the theoretical arrival time of the next request.
fn gcra(tat: Option<u64>, now: u64, quota: Quota) -> (Decision, Option<u64>) {
    let interval = quota.interval_ms() as i64;
    let tolerance = interval * i64::from(quota.burst);
    let now = now as i64;
    let tat = tat.map_or(now, |t| t as i64).max(now);
    let new_tat = tat + interval;
    let allow_at = new_tat - tolerance;
    let ms = |v: i64| Duration::from_millis(v.max(0) as u64);
    if allow_at > now {
        let decision = Decision {
            allowed: false,
            limit: quota.burst,
            remaining: 0,
            reset: ms(tat - now),
            retry_after: ms(allow_at - now),
        };
        return (decision, None);
    }
    let remaining = ((now - allow_at) / interval).min(i64::from(quota.burst)) as u32;
    let decision = Decision {
        allowed: true,
        limit: quota.burst,
        remaining,
        reset: ms(new_tat - now),
        retry_after: Duration::ZERO,
    };
    (decision, Some(new_tat as u64))
}

/// One budget a request draws from: the bucket's name (a metrics label), whose key in it
/// (an address, a user id), and its quota.
#[derive(Debug, Clone, Copy)]
pub struct Charge<'a> {
    pub bucket: Bucket,
    pub key: &'a str,
    pub quota: Quota,
}

impl Charge<'_> {
    /// One hash tag, `{rl}`, for every budget: the budgets of one request are charged by
    /// one script, which in a Redis Cluster must find all its keys in one slot.
    fn storage_key(&self) -> String {
        format!("stoa:{{rl}}:{}:{}", self.bucket.as_str(), self.key)
    }
}

// Same algorithm as `gcra`, on Redis' clock, over every bucket in KEYS[1..n] (ARGV: n,
// then interval, burst and cells wanted per bucket): each bucket grants as many of the
// cells wanted as fit, at least one, or the request is refused and no bucket is charged.
// Returns {{allowed, remaining, reset_ms, retry_ms, granted} per bucket, cached entry}.
const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
local decisions = {}
local new_tats = {}
local allowed = true
for i = 1, n do
  local interval = tonumber(ARGV[3 * i - 1])
  local burst = tonumber(ARGV[3 * i])
  local want = tonumber(ARGV[3 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local fit = math.floor((now - tat) / interval) + burst
  local granted = math.min(want, fit)
  if granted < 1 then
    allowed = false
    decisions[i] = {0, 0, tat - now, tat + interval - interval * burst - now, 0}
  else
    local new_tat = tat + interval * granted
    new_tats[i] = new_tat
    local remaining = math.min(math.floor((now - (new_tat - interval * burst)) / interval), burst)
    decisions[i] = {1, remaining, new_tat - now, 0, granted}
  end
end
if not allowed then return {decisions, false} end
for i = 1, n do
  redis.call('SET', KEYS[i], new_tats[i], 'PX', new_tats[i] - now)
end
-- Optionally read a cache entry in the same round trip (KEYS[n + 1]).
local cached = false
if #KEYS > n then cached = redis.call('GET', KEYS[n + 1]) end
return {decisions, cached}
";

/// In-process buckets, used when Redis cannot be.
struct LocalBuckets {
    started: Instant,
    tats: Mutex<HashMap<String, u64>>,
}

impl LocalBuckets {
    /// Same rule as the script: every bucket charged, or none.
    fn take<const N: usize>(&self, charges: &[Charge<'_>; N]) -> [Decision; N] {
        let now = self.started.elapsed().as_millis() as u64;
        let mut tats = match self.tats.lock() {
            Ok(tats) => tats,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Bound memory: drop buckets that have refilled completely.
        if tats.len() > 100_000 {
            tats.retain(|_, tat| *tat > now);
        }
        let keys = charges.map(|charge| charge.storage_key());
        let outcomes: [(Decision, Option<u64>); N] =
            std::array::from_fn(|i| gcra(tats.get(&keys[i]).copied(), now, charges[i].quota));
        if outcomes.iter().all(|(decision, _)| decision.allowed) {
            for (key, (_, new_tat)) in keys.into_iter().zip(&outcomes) {
                if let Some(new_tat) = new_tat {
                    tats.insert(key, *new_tat);
                }
            }
        }
        outcomes.map(|(decision, _)| decision)
    }
}

#[derive(Clone)]
pub struct RateLimiter {
    kv: Option<Arc<Kv>>,
    script: Arc<Script>,
    local: Arc<LocalBuckets>,
    leases: Arc<lease::Leases>,
}

impl RateLimiter {
    /// `lease_max`: the most cells of a shared budget a replica takes at once (1: every
    /// request asks Redis).
    pub fn new(kv: Option<Arc<Kv>>, lease_max: u32) -> Self {
        RateLimiter {
            kv,
            leases: Arc::new(lease::Leases::new(lease_max)),
            script: Arc::new(Script::new(GCRA_LUA)),
            local: Arc::new(LocalBuckets {
                started: Instant::now(),
                tats: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Takes one request from bucket `bucket:key`.
    pub async fn check(&self, bucket: Bucket, key: &str, quota: Quota) -> Decision {
        let ([decision], _) = self.take([Charge { bucket, key, quota }], None).await;
        decision
    }

    /// Takes one request from every budget in one round trip (none when the replica's
    /// leases cover them all), or from none when any is spent (a request refused by one
    /// budget does not use up the others), and when allowed also reads the Redis key
    /// `fetch` if it went to Redis. The second value is `None` when nothing was fetched
    /// (no key given, request refused, answered from leases, or Redis unavailable).
    pub async fn take<const N: usize>(
        &self,
        charges: [Charge<'_>; N],
        fetch: Option<String>,
    ) -> ([Decision; N], Option<Option<Vec<u8>>>) {
        let Some(kv) = &self.kv else {
            return (self.local.take(&charges), None);
        };
        let keys = charges.map(|charge| charge.storage_key());
        let quotas = charges.map(|charge| charge.quota);
        if let Some(decisions) = self.spend_leased(&keys, quotas).await {
            return (decisions, None);
        }
        // Ends the refill however this request ends, cancelled included.
        let _refill = Refill {
            leases: &self.leases,
            keys: &keys,
        };
        let wanted: [u32; N] = std::array::from_fn(|i| self.leases.want(&keys[i], quotas[i]));
        let script = self.script.clone();
        // In a cluster the entry lives in another slot than the budgets (`{c}`, not
        // `{rl}`): the cache reads it itself.
        let fetch = fetch.filter(|_| !kv.is_cluster());
        let fetching = fetch.is_some();
        let sent_keys = keys.clone();
        let answer = kv
            .run(|mut conn| async move {
                let mut invocation = script.prepare_invoke();
                invocation.arg(N);
                for ((key, quota), want) in sent_keys.into_iter().zip(quotas).zip(wanted) {
                    invocation
                        .key(key)
                        .arg(quota.interval_ms())
                        .arg(quota.burst)
                        .arg(want);
                }
                if let Some(fetch) = fetch {
                    invocation.key(fetch);
                }
                invocation
                    .invoke_async::<(Vec<(u8, u64, u64, u64, u32)>, Option<Vec<u8>>)>(&mut conn)
                    .await
            })
            .await;
        let Some((answers, cached)) = answer.filter(|(answers, _)| answers.len() == N) else {
            return (self.local.take(&charges), None);
        };
        let decisions: [Decision; N] = std::array::from_fn(|i| {
            let (allowed, remaining, reset_ms, retry_ms, granted) = answers[i];
            Decision {
                allowed: allowed == 1,
                limit: quotas[i].burst,
                // Cells leased ahead belong to this budget's client too.
                remaining: (remaining + u64::from(granted.saturating_sub(1)))
                    .min(u64::from(u32::MAX)) as u32,
                reset: Duration::from_millis(reset_ms),
                retry_after: Duration::from_millis(retry_ms),
            }
        });
        let allowed = decisions.iter().all(|d| d.allowed);
        if allowed {
            for (i, key) in keys.iter().enumerate() {
                let (_, remaining, reset_ms, _, granted) = answers[i];
                let in_redis = Decision {
                    remaining: remaining.min(u64::from(u32::MAX)) as u32,
                    reset: Duration::from_millis(reset_ms),
                    ..decisions[i]
                };
                self.leases
                    .granted(key.clone(), wanted[i], granted, &in_redis);
            }
        }
        (decisions, (fetching && allowed).then_some(cached))
    }
}

impl RateLimiter {
    /// Spends from the replica's leases, waiting once for another request's refill of
    /// them; `None` when this request must ask Redis (its keys are then marked refilling).
    async fn spend_leased<const N: usize>(
        &self,
        keys: &[String; N],
        quotas: [Quota; N],
    ) -> Option<[Decision; N]> {
        let mut may_wait = true;
        loop {
            let refilled = self.leases.refilled();
            tokio::pin!(refilled);
            refilled.as_mut().enable();
            match self.leases.claim(keys, quotas, may_wait) {
                lease::Claim::Spent(decisions) => return Some(decisions),
                lease::Claim::Wait => {
                    may_wait = false;
                    let _ = tokio::time::timeout(lease::REFILL_WAIT, refilled).await;
                }
                lease::Claim::Ask => return None,
            }
        }
    }
}

/// A refill in progress: its keys are released (and the requests waiting for it woken)
/// when it is dropped.
struct Refill<'a> {
    leases: &'a lease::Leases,
    keys: &'a [String],
}

impl Drop for Refill<'_> {
    fn drop(&mut self) {
        self.leases.refill_ended(self.keys);
    }
}

/// The client address: the peer, or with `trusted_hops` proxies in front, the address the
/// outermost trusted proxy saw, counted from the right of `X-Forwarded-For` (a client
/// cannot forge past a proxy that appends). Several header lines are one list, in order
/// (RFC 9110, 5.3), so a client cannot hide its address by sending a line of its own.
pub fn client_ip<'a>(
    peer: std::net::IpAddr,
    forwarded_for: impl IntoIterator<Item = &'a str>,
    trusted_hops: usize,
) -> std::net::IpAddr {
    if trusted_hops == 0 {
        return peer;
    }
    let hops: Vec<&str> = forwarded_for
        .into_iter()
        .flat_map(|line| line.split(','))
        .map(str::trim)
        .collect();
    hops.len()
        .checked_sub(trusted_hops)
        .and_then(|i| hops.get(i))
        .and_then(|ip| ip.parse().ok())
        .unwrap_or(peer)
}

/// The rate-limit key of an address. An IPv6 client usually owns a whole /64 (one
/// customer's prefix) and can pick any address in it, so IPv6 is keyed by its /64;
/// IPv4-mapped IPv6 addresses count as the IPv4 address.
pub fn bucket_key(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_parse() {
        assert_eq!(
            Quota::parse("600/1m"),
            Ok(Quota {
                burst: 600,
                period: Duration::from_secs(60)
            })
        );
        assert!(Quota::parse("0/1m").is_err());
        assert!(Quota::parse("ten/1m").is_err());
        assert!(Quota::parse("10").is_err());
    }

    #[test]
    fn gcra_allows_a_burst_then_refills_at_the_rate() {
        let quota = Quota {
            burst: 3,
            period: Duration::from_secs(3),
        };
        let mut tat = None;
        for expected_remaining in [2, 1, 0] {
            let (d, next) = gcra(tat, 0, quota);
            assert!(d.allowed);
            assert_eq!(d.remaining, expected_remaining);
            tat = next;
        }
        let (denied, next) = gcra(tat, 0, quota);
        assert!(!denied.allowed && next.is_none());
        assert_eq!(denied.retry_after, Duration::from_secs(1));
        // One interval later, exactly one more request fits.
        let (d, next) = gcra(tat, 1000, quota);
        assert!(d.allowed);
        let (d, _) = gcra(next, 1000, quota);
        assert!(!d.allowed);
    }

    #[tokio::test]
    async fn a_request_refused_by_one_budget_spends_none() {
        let limiter = RateLimiter::new(None, 64);
        let quota = |burst| Quota {
            burst,
            period: Duration::from_secs(600),
        };
        let ip = Charge {
            bucket: Bucket::Ip,
            key: "10.0.0.1",
            quota: quota(3),
        };
        let user = Charge {
            bucket: Bucket::User,
            key: "jake",
            quota: quota(1),
        };
        let ([a, b], _) = limiter.take([ip, user], None).await;
        assert!(a.allowed && b.allowed);
        assert_eq!(a.remaining, 2);
        let ([a, b], _) = limiter.take([ip, user], None).await;
        assert!(a.allowed && !b.allowed);
        // The address still has its two requests.
        assert_eq!(
            limiter
                .check(Bucket::Ip, "10.0.0.1", quota(3))
                .await
                .remaining,
            1
        );
    }

    #[test]
    fn client_ip_trusts_only_the_configured_hops() {
        let peer: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(client_ip(peer, ["1.2.3.4"], 0), peer);
        assert_eq!(
            client_ip(peer, ["6.6.6.6, 1.2.3.4"], 1).to_string(),
            "1.2.3.4"
        );
        assert_eq!(
            client_ip(peer, ["6.6.6.6, 1.2.3.4, 10.0.0.9"], 2).to_string(),
            "1.2.3.4"
        );
        assert_eq!(client_ip(peer, [], 1), peer);
        // A client's own header line comes first; the proxy's appended line is what counts.
        assert_eq!(
            client_ip(peer, ["6.6.6.6", "1.2.3.4"], 1).to_string(),
            "1.2.3.4"
        );
        assert_eq!(
            client_ip(peer, ["6.6.6.6, 7.7.7.7", "1.2.3.4, 10.0.0.9"], 2).to_string(),
            "1.2.3.4"
        );
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let a: std::net::IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: std::net::IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let other: std::net::IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(bucket_key(a), bucket_key(b));
        assert_ne!(bucket_key(a), bucket_key(other));
        assert_eq!(bucket_key("::ffff:1.2.3.4".parse().unwrap()), "1.2.3.4");
        assert_eq!(bucket_key("1.2.3.4".parse().unwrap()), "1.2.3.4");
    }

    #[tokio::test]
    async fn local_fallback_enforces_limits_per_key() {
        let limiter = RateLimiter::new(None, 64);
        let quota = Quota {
            burst: 2,
            period: Duration::from_secs(60),
        };
        assert!(limiter.check(Bucket::Ip, "a", quota).await.allowed);
        assert!(limiter.check(Bucket::Ip, "a", quota).await.allowed);
        assert!(!limiter.check(Bucket::Ip, "a", quota).await.allowed);
        assert!(limiter.check(Bucket::Ip, "b", quota).await.allowed);
    }
}
