//! Where Redis is: one server, a primary found through Sentinel, or a Redis Cluster.
//!
//! The Sentinel and Cluster settings list several hosts in one URL-shaped value
//! (`rediss://user:password@host1:26379,host2:26379/mymaster`), the form Lettuce and
//! redis-py's `from_url` users know. A URL parser rejects a host list, so the value is
//! split here and every part is handed to `url` to check and percent-decode.

use super::settings::EnvReader;
use super::{ConfigError, Secret};

const SCHEMES: &[&str] = &["redis", "rediss"];

/// Reads the three ways to name Redis; at most one may be set.
pub(super) fn read_target<F: Fn(&str) -> Option<String>>(
    s: &mut EnvReader<'_, F>,
) -> Result<Option<RedisTarget>, ConfigError> {
    let single = s.secret_url("STOA_REDIS_URL", SCHEMES, "(not set: in-process fallbacks)")?;
    let sentinels = s.secret_url("STOA_REDIS_SENTINELS", SCHEMES, "(not set)")?;
    let sentinel_password = s.secret("STOA_REDIS_SENTINEL_PASSWORD", "(none)")?;
    let cluster = s.secret_url("STOA_REDIS_CLUSTER", SCHEMES, "(not set)")?;
    let invalid = |name, reason: String| ConfigError::Invalid {
        name,
        value: "<redacted>".into(),
        reason,
    };
    let set = [single.is_some(), sentinels.is_some(), cluster.is_some()];
    if set.iter().filter(|s| **s).count() > 1 {
        return Err(invalid(
            "STOA_REDIS_URL",
            "set only one of STOA_REDIS_URL, STOA_REDIS_SENTINELS and STOA_REDIS_CLUSTER".into(),
        ));
    }
    if sentinel_password.is_some() && sentinels.is_none() {
        return Err(invalid(
            "STOA_REDIS_SENTINEL_PASSWORD",
            "is only used with STOA_REDIS_SENTINELS".into(),
        ));
    }
    if let Some((url, _)) = single {
        return Ok(Some(RedisTarget::Single(url)));
    }
    if let Some((value, _)) = sentinels {
        let name = "STOA_REDIS_SENTINELS";
        let (nodes, master) = parse_nodes(value.expose()).map_err(|r| invalid(name, r))?;
        if master.is_empty() || master.contains([',', '/', ' ']) {
            return Err(invalid(
                name,
                "must end with /<master name>, the name the sentinels monitor".into(),
            ));
        }
        return Ok(Some(RedisTarget::Sentinel(SentinelTarget {
            nodes,
            master,
            sentinel_password,
        })));
    }
    if let Some((value, _)) = cluster {
        let name = "STOA_REDIS_CLUSTER";
        let (nodes, path) = parse_nodes(value.expose()).map_err(|r| invalid(name, r))?;
        if !path.is_empty() {
            return Err(invalid(
                name,
                "takes no path: a cluster has no databases to choose from".into(),
            ));
        }
        return Ok(Some(RedisTarget::Cluster(nodes)));
    }
    Ok(None)
}

/// How Stoa reaches Redis.
#[derive(Debug, Clone)]
pub enum RedisTarget {
    /// One server (`STOA_REDIS_URL`).
    Single(Secret),
    /// The primary that the sentinels name (`STOA_REDIS_SENTINELS`), followed across
    /// failovers.
    Sentinel(SentinelTarget),
    /// A Redis Cluster, found from its seed nodes (`STOA_REDIS_CLUSTER`).
    Cluster(Nodes),
}

impl RedisTarget {
    /// For logs and `kubectl get`: which tier is in use.
    pub fn kind(&self) -> &'static str {
        match self {
            RedisTarget::Single(_) => "single",
            RedisTarget::Sentinel(_) => "sentinel",
            RedisTarget::Cluster(_) => "cluster",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SentinelTarget {
    /// The sentinels' addresses; TLS and credentials here are for the data nodes.
    pub nodes: Nodes,
    /// The name the sentinels monitor the primary under.
    pub master: String,
    /// The sentinels' own password (`requirepass` in sentinel.conf), if they need one.
    pub sentinel_password: Option<Secret>,
}

/// Hosts that share a scheme and credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nodes {
    /// `rediss://`: TLS, verified against `STOA_REDIS_CA_FILE` or the system roots.
    pub tls: bool,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub addresses: Vec<(String, u16)>,
}

/// Parses `redis[s]://[user[:password]@]host:port[,host:port…][/path]` into its hosts and
/// the path (the master name for Sentinel). Errors never echo the value: it may hold a
/// password.
pub(super) fn parse_nodes(value: &str) -> Result<(Nodes, String), String> {
    let (scheme, rest) = value
        .split_once("://")
        .ok_or("must start with redis:// or rediss://")?;
    let tls = match scheme {
        "redis" => false,
        "rediss" => true,
        _ => return Err("must start with redis:// or rediss://".into()),
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let mut addresses = Vec::new();
    for host in hosts.split(',').map(str::trim) {
        let parsed = url::Url::parse(&format!("redis://{host}"))
            .ok()
            .filter(|u| u.path().is_empty() || u.path() == "/")
            .and_then(|u| Some((u.host_str()?.to_owned(), u.port()?)))
            .ok_or_else(|| format!("`{host}` is not host:port"))?;
        addresses.push(parsed);
    }
    let (username, password) = match userinfo {
        None => (None, None),
        Some(userinfo) => {
            // Decoded by `url`, as for STOA_REDIS_URL.
            let u = url::Url::parse(&format!("redis://{userinfo}@h"))
                .map_err(|_| "its user name or password is not valid URL userinfo")?;
            let username = Some(u.username())
                .filter(|n| !n.is_empty())
                .map(decode)
                .transpose()?;
            let password = u.password().map(decode).transpose()?.map(Secret::new);
            (username, password)
        }
    };
    let nodes = Nodes {
        tls,
        username,
        password,
        addresses,
    };
    let path = path.split('?').next().unwrap_or_default().to_owned();
    Ok((nodes, path))
}

fn decode(part: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(part)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "its user name or password is not UTF-8".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_list_with_credentials_and_a_master_name() {
        let (nodes, master) = parse_nodes(
            "rediss://stoa:p%40ss@s-0.redis:26379, s-1.redis:26379,10.0.0.3:26380/mymaster",
        )
        .unwrap();
        assert!(nodes.tls);
        assert_eq!(nodes.username.as_deref(), Some("stoa"));
        assert_eq!(nodes.password.as_ref().map(Secret::expose), Some("p@ss"));
        assert_eq!(
            nodes.addresses,
            vec![
                ("s-0.redis".to_owned(), 26379),
                ("s-1.redis".to_owned(), 26379),
                ("10.0.0.3".to_owned(), 26380)
            ]
        );
        assert_eq!(master, "mymaster");
    }

    #[test]
    fn a_password_without_a_user_is_the_default_users() {
        let (nodes, path) = parse_nodes("redis://:secret@a:7000,b:7001").unwrap();
        assert!(!nodes.tls);
        assert_eq!(nodes.username, None);
        assert_eq!(nodes.password.as_ref().map(Secret::expose), Some("secret"));
        assert_eq!(path, "");
    }

    #[test]
    fn bad_lists_are_refused_without_echoing_the_password() {
        for bad in [
            "http://:hunter2@a:1",
            "redis://:hunter2@a",
            "redis://:hunter2@a:1,,b:2",
            "redis://:hunter2@a:notaport",
            "redis://:hunter2@[::1:1",
        ] {
            let reason = parse_nodes(bad).unwrap_err();
            assert!(!reason.contains("hunter2"), "{bad}: {reason}");
        }
    }
}
