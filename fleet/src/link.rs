//! A connection to the shared Redis: a standalone server (through a reconnecting
//! `ConnectionManager`) or a Redis Cluster (slot routing, MOVED handling), one type for both.
//!
//! Why the `redis` crate: it is the most used Redis client for Rust, speaks both deployments
//! with one `ConnectionLike` trait, and its `Script` runs `EVALSHA` with a `SCRIPT LOAD`
//! fallback. `fred` would do as well, with a larger API.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// What went wrong talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected reply: {0}")]
    Reply(String),
}

impl StoreError {
    /// Whether Redis refused the call because the slot of its keys is moving to another
    /// master of a Redis Cluster (resharding): a script met a key that is not on its master,
    /// or a command some keys that are not there yet (`TRYAGAIN`). The call failed before it
    /// wrote, and the store is otherwise fine.
    pub fn is_slot_moving(&self) -> bool {
        match self {
            Self::Redis(e) => {
                e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain)
                    || e.to_string().contains("non local key")
            }
            Self::Timeout(_) | Self::Reply(_) => false,
        }
    }
}

/// A connection to a standalone server or to a Redis Cluster.
#[derive(Clone)]
pub enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Standalone(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Standalone(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

impl Connection {
    /// Runs `cmd` within `timeout`.
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &Cmd,
        timeout: Duration,
    ) -> Result<T, StoreError> {
        let mut conn = self.clone();
        within(timeout, cmd.query_async(&mut conn)).await
    }

    /// Runs a script `invocation` within `timeout`.
    pub async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        timeout: Duration,
    ) -> Result<T, StoreError> {
        let mut conn = self.clone();
        within(timeout, invocation.invoke_async(&mut conn)).await
    }
}

/// The answer of `call`, or a timeout after `timeout`.
async fn within<T>(
    timeout: Duration,
    call: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| StoreError::Timeout(timeout))?
        .map_err(StoreError::from)
}

/// Connects to `urls`: a Redis Cluster when the first server says `cluster_enabled:1` (every
/// URL is then a seed node), a standalone server otherwise. Returns the command connection and
/// the client to open a pub/sub connection with (in a cluster, `PUBLISH` reaches every node,
/// so subscribing on one node is enough).
pub async fn connect(
    urls: &[String],
    timeout: Duration,
) -> Result<(Connection, redis::Client), StoreError> {
    let first = urls
        .first()
        .ok_or_else(|| StoreError::Reply("no redis URL".into()))?;
    let client = redis::Client::open(
        redis::IntoConnectionInfo::into_connection_info(first.as_str())?
            .set_tcp_settings(tcp_settings()),
    )?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    let mut manager = tokio::time::timeout(
        timeout * 3,
        client.get_connection_manager_with_config(config),
    )
    .await
    .map_err(|_| StoreError::Timeout(timeout * 3))??;
    let info: String = redis::cmd("INFO")
        .arg("cluster")
        .query_async(&mut manager)
        .await?;
    if !info.contains("cluster_enabled:1") {
        return Ok((Connection::Standalone(manager), client));
    }
    let cluster = redis::cluster::ClusterClientBuilder::new(urls.iter().map(String::as_str))
        .tcp_settings(tcp_settings())
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(2)
        .build()?;
    let conn = tokio::time::timeout(timeout * 3, cluster.get_async_connection())
        .await
        .map_err(|_| StoreError::Timeout(timeout * 3))??;
    Ok((Connection::Cluster(conn), client))
}

/// TCP to Redis without Nagle's algorithm (`TCP_NODELAY`, which Redis sets on its side; the
/// `redis` crate does not by default): many calls share one connection, and a small request
/// written while an earlier one is not acknowledged yet would otherwise wait for that ACK,
/// which the server may delay up to 40 ms.
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

/// The URLs with their passwords replaced, for logs and start-up summaries.
pub fn redacted(urls: &[String]) -> String {
    urls.iter()
        .map(|url| match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}<redacted>@{}", &url[..scheme + 3], &url[at + 1..])
            }
            _ => url.clone(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        let urls = vec![
            "redis://:hunter2@10.0.0.5:6379".to_owned(),
            "redis://10.0.0.6:6379".to_owned(),
        ];
        assert_eq!(
            redacted(&urls),
            "redis://<redacted>@10.0.0.5:6379,redis://10.0.0.6:6379"
        );
    }
}
