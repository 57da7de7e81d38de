//! Finding the Redis to talk to: a fixed server, the primary the sentinels name, or a
//! cluster found from its seed nodes.

use std::path::Path;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, IntoConnectionInfo, TlsCertificates, TlsMode};

use super::connection::Connection;
use crate::config::{Nodes, RedisTarget, SentinelTarget};

/// A connection and the server it was made to (for a cluster, none in particular).
pub(super) struct Located {
    pub connection: Connection,
    /// Where subscriptions go: the server itself.
    pub server: Option<redis::Client>,
}

impl Located {
    pub fn address(&self) -> Option<&ConnectionAddr> {
        self.server.as_ref().map(|c| c.get_connection_info().addr())
    }
}

pub(super) enum Locator {
    Server(redis::Client),
    /// Asked again whenever the current primary fails or steps down.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    Cluster {
        client: ClusterClient,
        /// How to reach one node directly (a subscription's).
        nodes: Box<NodeSettings>,
    },
}

impl Locator {
    pub fn new(
        target: &RedisTarget,
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> anyhow::Result<Locator> {
        // `rediss://` verifies the server's certificate and host name: against the CA in
        // STOA_REDIS_CA_FILE if set, else the system's roots.
        let certificates = ca_file
            .map(|path| {
                std::fs::read(path)
                    .map(|root_cert| TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root_cert),
                    })
                    .map_err(|e| {
                        anyhow::anyhow!("cannot read STOA_REDIS_CA_FILE {}: {e}", path.display())
                    })
            })
            .transpose()?;
        let invalid = |what: &str, e: redis::RedisError| {
            anyhow::anyhow!("invalid {what} or CA: {:?}", e.kind())
        };
        Ok(match target {
            RedisTarget::Single(url) => Locator::Server(
                open_client(url.expose(), certificates.as_ref())
                    .map_err(|e| invalid("STOA_REDIS_URL", e))?,
            ),
            RedisTarget::Sentinel(target) => Locator::Sentinel(tokio::sync::Mutex::new(
                sentinel_client(target, certificates)
                    .map_err(|e| invalid("STOA_REDIS_SENTINELS", e))?,
            )),
            RedisTarget::Cluster(nodes) => {
                let settings = NodeSettings {
                    nodes: nodes.clone(),
                    certificates,
                };
                Locator::Cluster {
                    client: cluster_client(&settings, timeout)
                        .map_err(|e| invalid("STOA_REDIS_CLUSTER", e))?,
                    nodes: Box::new(settings),
                }
            }
        })
    }

    /// A connection made without asking anything of the network, where that is possible
    /// (Redis may be down at start-up): the fixed server's.
    pub fn connect_lazily(&self, timeout: Duration) -> anyhow::Result<Option<Located>> {
        let Locator::Server(client) = self else {
            return Ok(None);
        };
        Ok(Some(server_connection(client.clone(), timeout)?))
    }

    /// Finds the server (the sentinels' current primary) or joins the cluster.
    pub async fn locate(&self, timeout: Duration) -> anyhow::Result<Located> {
        match self {
            Locator::Server(client) => server_connection(client.clone(), timeout),
            Locator::Sentinel(sentinels) => {
                let client = sentinels
                    .lock()
                    .await
                    .async_get_client()
                    .await
                    .map_err(|e| anyhow::anyhow!("sentinels name no primary: {}", e.category()))?;
                server_connection(client, timeout)
            }
            Locator::Cluster { client, .. } => {
                let connection = client
                    .get_async_connection()
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot join the cluster: {}", e.category()))?;
                Ok(Located {
                    connection: Connection::Cluster(connection),
                    server: None,
                })
            }
        }
    }

    /// A client for one node of the cluster, with the cluster's credentials and TLS.
    pub fn cluster_node(&self, host: &str, port: u16) -> Option<redis::RedisResult<redis::Client>> {
        match self {
            Locator::Cluster { nodes, .. } => Some(nodes.client(host, port)),
            _ => None,
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Locator::Cluster { .. })
    }

    pub fn follows_a_primary(&self) -> bool {
        matches!(self, Locator::Sentinel(_))
    }
}

fn server_connection(client: redis::Client, timeout: Duration) -> anyhow::Result<Located> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500));
    let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)
        .map_err(|e| anyhow::anyhow!("cannot set up Redis: {:?}", e.kind()))?;
    Ok(Located {
        connection: Connection::Server(manager),
        server: Some(client),
    })
}

fn address(host: &str, port: u16, tls: bool) -> ConnectionAddr {
    if tls {
        ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host.to_owned(), port)
    }
}

fn sentinel_client(
    target: &SentinelTarget,
    certificates: Option<TlsCertificates>,
) -> redis::RedisResult<SentinelClient> {
    let nodes = &target.nodes;
    let sentinels = nodes
        .addresses
        .iter()
        .map(|(host, port)| address(host, *port, nodes.tls));
    let mut builder =
        SentinelClientBuilder::new(sentinels, &target.master, SentinelServerType::Master)?;
    if nodes.tls {
        builder = builder.set_client_to_redis_tls_mode(TlsMode::Secure);
        if let Some(certificates) = certificates {
            builder = builder
                .set_client_to_redis_certificates(certificates.clone())
                .set_client_to_sentinel_certificates(certificates);
        }
    }
    if let Some(username) = &nodes.username {
        builder = builder.set_client_to_redis_username(username);
    }
    if let Some(password) = &nodes.password {
        builder = builder.set_client_to_redis_password(password.expose());
    }
    if let Some(password) = &target.sentinel_password {
        builder = builder.set_client_to_sentinel_password(password.expose());
    }
    builder.build()
}

/// The cluster's credentials and TLS, for a connection to any of its nodes.
pub(super) struct NodeSettings {
    nodes: Nodes,
    certificates: Option<TlsCertificates>,
}

impl NodeSettings {
    fn info(&self, host: &str, port: u16) -> redis::RedisResult<redis::ConnectionInfo> {
        let info = address(host, port, self.nodes.tls).into_connection_info()?;
        let mut settings = info.redis_settings().clone();
        if let Some(username) = &self.nodes.username {
            settings = settings.set_username(username);
        }
        if let Some(password) = &self.nodes.password {
            settings = settings.set_password(password.expose());
        }
        Ok(info.set_redis_settings(settings))
    }

    fn client(&self, host: &str, port: u16) -> redis::RedisResult<redis::Client> {
        open_client(self.info(host, port)?, self.tls_certificates())
    }

    /// The CA to verify the nodes against, when they speak TLS.
    fn tls_certificates(&self) -> Option<&TlsCertificates> {
        self.certificates.as_ref().filter(|_| self.nodes.tls)
    }
}

/// A client for `info`, verifying TLS against `certificates` when given (else the
/// system's roots).
fn open_client(
    info: impl IntoConnectionInfo,
    certificates: Option<&TlsCertificates>,
) -> redis::RedisResult<redis::Client> {
    match certificates {
        Some(certificates) => redis::Client::build_with_tls(info, certificates.clone()),
        None => redis::Client::open(info),
    }
}

fn cluster_client(settings: &NodeSettings, timeout: Duration) -> redis::RedisResult<ClusterClient> {
    let seeds = settings
        .nodes
        .addresses
        .iter()
        .map(|(host, port)| settings.info(host, *port))
        .collect::<redis::RedisResult<Vec<_>>>()?;
    // The user, password and TLS mode come from the seeds' own connection info (the
    // builder takes the first node's); only the CA needs saying.
    let mut builder = ClusterClientBuilder::new(seeds)
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(2);
    if let Some(certificates) = settings.tls_certificates() {
        builder = builder.certs(certificates.clone());
    }
    builder.build()
}
