//! Highly available Redis of the test's own: a primary, a replica and three sentinels,
//! or a three-primary cluster with a replica each. Real `redis-server` processes on free
//! ports, in a temporary directory, stopped on drop.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;
use super::tls::ThrowawayCa;

pub const MASTER_NAME: &str = "stoa";
/// The data nodes' password (`requirepass`, and `masterauth` to replicate).
pub const DATA_PASSWORD: &str = "data-secret";
/// The sentinels' own password.
pub const SENTINEL_PASSWORD: &str = "sentinel-secret";
/// The data nodes' ACL user when they speak TLS (their default user is off then).
pub const DATA_USER: &str = "stoa";

struct Process {
    port: u16,
    child: Option<Child>,
}

impl Process {
    fn spawn(port: u16, args: &[String]) -> Process {
        let child = Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (Debian package redis-server)");
        super::wait_for_port(port, "redis-server");
        Process {
            port,
            child: Some(child),
        }
    }

    /// SIGKILL: no goodbye to clients or replicas, as when a node's machine dies.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A data node's arguments: a password for the default user; or, with `tls`, TLS only
/// (replication too), an ACL user and the default user off.
fn data_node_args(
    dir: &Path,
    port: u16,
    tls: Option<&ThrowawayCa>,
    extra: &[String],
) -> Vec<String> {
    let port = port.to_string();
    let log = dir.join(format!("{port}.log"));
    let user = format!(">{DATA_PASSWORD}");
    let mut args: Vec<&str> = vec![
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        dir.to_str().unwrap(),
        "--logfile",
        log.to_str().unwrap(),
        // A replica that has not finished its first sync cannot be promoted: no delay.
        "--repl-diskless-sync-delay",
        "0",
        "--masterauth",
        DATA_PASSWORD,
    ];
    match tls {
        None => args.extend(["--port", &port, "--requirepass", DATA_PASSWORD]),
        Some(ca) => args.extend([
            "--port",
            "0",
            "--tls-port",
            &port,
            "--tls-cert-file",
            ca.cert.to_str().unwrap(),
            "--tls-key-file",
            ca.key.to_str().unwrap(),
            "--tls-ca-cert-file",
            ca.ca.to_str().unwrap(),
            "--tls-auth-clients",
            "no",
            "--tls-replication",
            "yes",
            "--user",
            "default",
            "off",
            "--user",
            DATA_USER,
            "on",
            &user,
            "~*",
            "&*",
            "+@all",
            "--masteruser",
            DATA_USER,
        ]),
    }
    let mut args: Vec<String> = args.into_iter().map(str::to_owned).collect();
    args.extend_from_slice(extra);
    args
}

/// A client for `url`, trusting `ca` for `rediss://`.
fn client(url: &str, ca: Option<&Path>) -> Option<redis::Client> {
    match ca {
        None => redis::Client::open(url).ok(),
        Some(ca) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(ca).ok()?),
            },
        )
        .ok(),
    }
}

async fn query<T: redis::FromRedisValue>(url: &str, command: &mut redis::Cmd) -> Option<T> {
    query_with(None, url, command).await
}

async fn query_with<T: redis::FromRedisValue>(
    ca: Option<&Path>,
    url: &str,
    command: &mut redis::Cmd,
) -> Option<T> {
    let client = client(url, ca)?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(1),
        client.get_multiplexed_async_connection(),
    )
    .await
    .ok()?
    .ok()?;
    command.query_async(&mut conn).await.ok()
}

/// A primary, a replica and three sentinels watching them.
pub struct SentinelSet {
    _dir: tempfile::TempDir,
    nodes: Vec<Process>,
    sentinels: Vec<Process>,
    /// The CA of every node's and sentinel's certificate, when they speak TLS.
    ca: Option<PathBuf>,
}

impl SentinelSet {
    pub async fn start() -> SentinelSet {
        SentinelSet::start_with(None).await
    }

    /// With `tls`: every node and sentinel speaks TLS only (a certificate `tls` signed),
    /// and the data nodes have an ACL user instead of the default user's password.
    pub async fn start_with(tls: Option<&ThrowawayCa>) -> SentinelSet {
        let dir = tempfile::tempdir().unwrap();
        let primary_port = free_port();
        let primary = Process::spawn(
            primary_port,
            &data_node_args(dir.path(), primary_port, tls, &[]),
        );
        let replica_port = free_port();
        let replica = Process::spawn(
            replica_port,
            &data_node_args(
                dir.path(),
                replica_port,
                tls,
                &[
                    "--replicaof".into(),
                    "127.0.0.1".into(),
                    primary_port.to_string(),
                    // Writable, so a test can make it miss what the primary wrote last.
                    "--replica-read-only".into(),
                    "no".into(),
                ],
            ),
        );
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            // Sentinels rewrite their configuration file: one each, writable.
            let conf = dir.path().join(format!("sentinel-{i}.conf"));
            let listen = match tls {
                None => format!("port {port}\n"),
                Some(ca) => format!(
                    "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\n\
                     tls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n\
                     sentinel auth-user {MASTER_NAME} {DATA_USER}\n",
                    ca.cert.display(),
                    ca.key.display(),
                    ca.ca.display()
                ),
            };
            std::fs::write(
                &conf,
                format!(
                    "{listen}bind 127.0.0.1\ndir {dir}\n\
                     requirepass {SENTINEL_PASSWORD}\nsentinel sentinel-pass {SENTINEL_PASSWORD}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} 2\n\
                     sentinel auth-pass {MASTER_NAME} {DATA_PASSWORD}\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 10000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    dir = dir.path().display()
                ),
            )
            .unwrap();
            sentinels.push(Process::spawn(
                port,
                &[conf.to_str().unwrap().to_owned(), "--sentinel".into()],
            ));
        }
        let set = SentinelSet {
            _dir: dir,
            nodes: vec![primary, replica],
            sentinels,
            ca: tls.map(|ca| ca.ca.clone()),
        };
        set.wait_until_watched().await;
        set
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        url: &str,
        command: &mut redis::Cmd,
    ) -> Option<T> {
        query_with(self.ca.as_deref(), url, command).await
    }

    /// Until every sentinel knows the replica and the two other sentinels: only then can
    /// they agree on a failover.
    async fn wait_until_watched(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut ready = true;
            for sentinel in &self.sentinels {
                let url = self.sentinel_url(sentinel.port);
                let replicas: Vec<redis::Value> = self
                    .query(
                        &url,
                        redis::cmd("SENTINEL").arg("REPLICAS").arg(MASTER_NAME),
                    )
                    .await
                    .unwrap_or_default();
                let others: Vec<redis::Value> = self
                    .query(
                        &url,
                        redis::cmd("SENTINEL").arg("SENTINELS").arg(MASTER_NAME),
                    )
                    .await
                    .unwrap_or_default();
                ready &= replicas.len() == 1 && others.len() == 2;
            }
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels did not find each other and the replica"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn scheme(&self) -> &'static str {
        if self.ca.is_some() { "rediss" } else { "redis" }
    }

    fn sentinel_url(&self, port: u16) -> String {
        format!("{}://:{SENTINEL_PASSWORD}@127.0.0.1:{port}", self.scheme())
    }

    /// The data nodes' user and password, as a URL's userinfo.
    fn data_credentials(&self) -> String {
        match self.ca {
            None => format!(":{DATA_PASSWORD}"),
            Some(_) => format!("{DATA_USER}:{DATA_PASSWORD}"),
        }
    }

    /// `STOA_REDIS_SENTINELS` for this set.
    pub fn stoa_setting(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!(
            "{}://{}@{}/{MASTER_NAME}",
            self.scheme(),
            self.data_credentials(),
            hosts.join(",")
        )
    }

    /// The primary's port as the first sentinel that answers names it.
    pub async fn primary_port(&self) -> Option<u16> {
        for sentinel in &self.sentinels {
            if sentinel.child.is_none() {
                continue;
            }
            let answer: Option<(String, u16)> = self
                .query(
                    &self.sentinel_url(sentinel.port),
                    redis::cmd("SENTINEL")
                        .arg("GET-MASTER-ADDR-BY-NAME")
                        .arg(MASTER_NAME),
                )
                .await;
            if let Some((_, port)) = answer {
                return Some(port);
            }
        }
        None
    }

    pub fn data_url(&self, port: u16) -> String {
        format!(
            "{}://{}@127.0.0.1:{port}",
            self.scheme(),
            self.data_credentials()
        )
    }

    /// Kills the current primary (SIGKILL); returns its port.
    pub async fn kill_primary(&mut self) -> u16 {
        let port = self.primary_port().await.expect("a primary");
        let node = self.nodes.iter_mut().find(|n| n.port == port).unwrap();
        node.kill();
        port
    }

    /// Whether `key` exists on the node at `port`.
    pub async fn exists_on(&self, port: u16, key: &str) -> bool {
        self.query::<bool>(&self.data_url(port), redis::cmd("EXISTS").arg(key))
            .await
            .unwrap_or(false)
    }

    /// Deletes the keys matching `pattern` from every surviving node, as if asynchronous
    /// replication had not carried the primary's last writes before it died; returns how
    /// many were deleted.
    pub async fn lose_unreplicated(&self, pattern: &str) -> usize {
        let mut lost = 0;
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let url = self.data_url(node.port);
            let keys: Vec<String> = self
                .query(&url, redis::cmd("KEYS").arg(pattern))
                .await
                .unwrap();
            if !keys.is_empty() {
                let _: () = self
                    .query(&url, redis::cmd("DEL").arg(&keys))
                    .await
                    .unwrap();
            }
            lost += keys.len();
        }
        lost
    }

    /// The data nodes still running.
    pub fn data_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// How many keys match `pattern` on the node at `port`.
    pub async fn count_on(&self, port: u16, pattern: &str) -> usize {
        self.query::<Vec<String>>(&self.data_url(port), redis::cmd("KEYS").arg(pattern))
            .await
            .unwrap_or_default()
            .len()
    }
}

/// A free port whose cluster bus port (port + 10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port <= 55535 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

/// Three primaries and a replica of each, in cluster mode.
pub struct RedisCluster {
    _dir: tempfile::TempDir,
    nodes: Vec<Process>,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = free_cluster_port();
            let extra = [
                "--cluster-enabled".to_owned(),
                "yes".to_owned(),
                "--cluster-config-file".to_owned(),
                dir.path()
                    .join(format!("nodes-{port}.conf"))
                    .to_str()
                    .unwrap()
                    .to_owned(),
                "--cluster-node-timeout".to_owned(),
                "1000".to_owned(),
            ];
            nodes.push(Process::spawn(
                port,
                &data_node_args(dir.path(), port, None, &extra),
            ));
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .args([
                "--no-auth-warning",
                "-a",
                DATA_PASSWORD,
                "--cluster",
                "create",
            ])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("redis-cli must be installed (Debian package redis-tools)");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        let cluster = RedisCluster { _dir: dir, nodes };
        let deadline = Instant::now() + Duration::from_secs(30);
        // Formed, and every replica has its primary's data (else it cannot take over).
        for node in &cluster.nodes {
            loop {
                let info: Option<String> = query(
                    &cluster.url_of(node.port),
                    redis::cmd("CLUSTER").arg("INFO"),
                )
                .await;
                let replication: Option<String> = query(
                    &cluster.url_of(node.port),
                    redis::cmd("INFO").arg("replication"),
                )
                .await;
                let synced = replication.is_some_and(|r| {
                    r.contains("role:master") || r.contains("master_link_status:up")
                });
                if synced && info.is_some_and(|i| i.contains("cluster_state:ok")) {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster did not form");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        cluster
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    pub fn url_of(&self, port: u16) -> String {
        format!("redis://:{DATA_PASSWORD}@127.0.0.1:{port}")
    }

    /// `STOA_REDIS_CLUSTER`: two of the six nodes, as a seed list (the rest is found).
    pub fn stoa_setting(&self) -> String {
        format!(
            "redis://:{DATA_PASSWORD}@127.0.0.1:{},127.0.0.1:{}",
            self.nodes[0].port, self.nodes[1].port
        )
    }

    /// The port of the live primary serving `key`'s slot, per `CLUSTER NODES` on a live
    /// node.
    pub async fn primary_for(&self, key: &str) -> Option<u16> {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let url = self.url_of(node.port);
            let Some(slot) =
                query::<u16>(&url, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).await
            else {
                continue;
            };
            let Some(table) = query::<String>(&url, redis::cmd("CLUSTER").arg("NODES")).await
            else {
                continue;
            };
            for line in table.lines() {
                let fields: Vec<&str> = line.split(' ').collect();
                if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                    continue;
                }
                let serves = fields[8..].iter().any(|range| {
                    let (start, end) = range.split_once('-').unwrap_or((range, range));
                    matches!((start.parse::<u16>(), end.parse::<u16>()), (Ok(s), Ok(e)) if s <= slot && slot <= e)
                });
                if serves {
                    let port = fields[1].split(['@', ':']).nth(1)?.parse().ok()?;
                    return Some(port);
                }
            }
        }
        None
    }

    /// Every live node's view of the cluster, for a failure message.
    pub async fn describe(&self) -> String {
        let mut views = String::new();
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let view: Option<String> =
                query(&self.url_of(node.port), redis::cmd("CLUSTER").arg("NODES")).await;
            let log = std::fs::read_to_string(self._dir.path().join(format!("{}.log", node.port)))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            views += &format!(
                "{}:\n{}\nlog:\n{}\n",
                node.port,
                view.unwrap_or_default(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        views
    }

    /// `CONFIG SET name value` on the node at `port`.
    pub async fn config_set(&self, port: u16, name: &str, value: &str) {
        let _: () = query(
            &self.url_of(port),
            redis::cmd("CONFIG").arg("SET").arg(name).arg(value),
        )
        .await
        .unwrap();
    }

    /// The live primaries' ports.
    pub async fn primaries(&self) -> Vec<u16> {
        let mut ports = Vec::new();
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let role: Option<String> = query(
                &self.url_of(node.port),
                redis::cmd("INFO").arg("replication"),
            )
            .await;
            if role.is_some_and(|r| r.contains("role:master")) {
                ports.push(node.port);
            }
        }
        ports
    }

    /// Kills the primary serving `key`; returns its port.
    pub async fn kill_primary_for(&mut self, key: &str) -> u16 {
        let port = self.primary_for(key).await.expect("a primary for the key");
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap()
            .kill();
        port
    }

    /// How many keys match `pattern` on the node at `port`.
    pub async fn count_on(&self, port: u16, pattern: &str) -> usize {
        query::<Vec<String>>(&self.url_of(port), redis::cmd("KEYS").arg(pattern))
            .await
            .unwrap_or_default()
            .len()
    }
}
