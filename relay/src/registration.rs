//! Fleet registration (`--register REDIS_URL`): the relay advertises its public URLs, region,
//! capacity and live load (allocations, relayed bytes/s) in the shared Redis, under a lease it
//! renews every `--node-heartbeat`. Signaling reads the fleet and gives each room one of its
//! relays (`fleet::relays::choose`). A relay that dies drops out when its lease (`--node-lease`)
//! runs out; one that shuts down marks itself draining before anything else (its rooms move
//! at once) and withdraws when it stops.
//!
//! With every heartbeat, and a last time when it stops, it also publishes the usage of the
//! users whose traffic changed (`fleet::usage`), which signaling's `/v1/usage` reports for the
//! whole fleet; what a failed publication held is published with the next.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fleet::link::{self, Connection, StoreError};
use fleet::relays::{self, Advertised, RelayRecord, RelayState};
use tokio::sync::watch;

use crate::config::{Config, Secret};
use crate::usage_publisher::UsagePublisher;
use crate::{RelayAddrs, RelayStatus};

/// How long one Redis call may take.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// What the relay advertises about itself, and how often.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    pub redis_urls: Vec<String>,
    pub id: String,
    pub urls: Vec<String>,
    pub region: Option<String>,
    pub capacity: f64,
    pub heartbeat: Duration,
    pub lease: Duration,
    /// The TURN secret this relay agreed on through Redis (it was given no credentials): each
    /// heartbeat writes it back if Redis lost it, and renews its time to live.
    pub agreed_turn_secret: Option<Secret>,
}

impl FleetSettings {
    /// From `--register` and the fleet flags; `None` when the relay does not register.
    pub fn from_config(config: &Config, addrs: &RelayAddrs) -> Option<Self> {
        if config.register.is_empty() {
            return None;
        }
        Some(Self {
            redis_urls: config.register.clone(),
            id: config
                .node_id
                .clone()
                .unwrap_or_else(|| format!("relay-{:08x}", rand::random::<u32>())),
            urls: if config.public_urls.is_empty() {
                advertised_urls(config, addrs)
            } else {
                config.public_urls.clone()
            },
            region: config.region.clone(),
            capacity: config.capacity,
            heartbeat: config.node_heartbeat,
            lease: config.node_lease,
            agreed_turn_secret: None,
        })
    }
}

/// The URLs of the bound listeners as clients reach them: the `--external-ip` of the
/// listener's family if there is one, else the listener's own address (a wildcard listener
/// uses the relay IP of its family).
pub fn advertised_urls(config: &Config, addrs: &RelayAddrs) -> Vec<String> {
    let host = |addr: &std::net::SocketAddr| {
        let local = addr.ip();
        let public = config
            .external_ip
            .iter()
            .find(|e| e.public.is_ipv4() == local.is_ipv4())
            .map(|e| e.public);
        let ip = public.unwrap_or_else(|| {
            if local.is_unspecified() {
                addrs
                    .relay_ips
                    .iter()
                    .copied()
                    .find(|ip| ip.is_ipv4() == local.is_ipv4())
                    .unwrap_or(local)
            } else {
                local
            }
        });
        std::net::SocketAddr::new(ip, addr.port()).to_string()
    };
    let mut urls = Vec::new();
    if let Some(udp) = addrs.udp.first() {
        urls.push(format!("stun:{}", host(udp)));
    }
    urls.extend(
        addrs
            .udp
            .iter()
            .map(|a| format!("turn:{}?transport=udp", host(a))),
    );
    urls.extend(
        addrs
            .tcp
            .iter()
            .map(|a| format!("turn:{}?transport=tcp", host(a))),
    );
    urls.extend(
        addrs
            .tls
            .iter()
            .map(|a| format!("turns:{}?transport=tcp", host(a))),
    );
    urls
}

/// Why the relay could not join the fleet.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "--node-id {id} is registered by another live relay (at {}): give every relay its own \
         --node-id",
        urls.join(" ")
    )]
    IdTaken { id: String, urls: Vec<String> },
}

/// A registered relay. See the module docs.
pub struct Registration {
    settings: FleetSettings,
    /// This process, in its fleet record: another relay given the same id is told apart.
    instance: String,
    /// Another live relay holds this id (at the last heartbeat): nothing is advertised.
    id_taken: AtomicBool,
    conn: Connection,
    status: RelayStatus,
    /// Held while a record is written or withdrawn, so writes reach Redis in the order their
    /// records were made (a heartbeat's `active` made before the drain cannot land after the
    /// `draining` mark); true once withdrawn, after which nothing is advertised again.
    withdrawn: tokio::sync::Mutex<bool>,
    usage: UsagePublisher,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Registration {
    /// Connects to the fleet's Redis and advertises the relay once (so it is in the fleet when
    /// this returns).
    /// Fails when another live relay holds the same `--node-id`.
    pub async fn start(
        settings: FleetSettings,
        status: RelayStatus,
    ) -> Result<Self, RegistrationError> {
        let (conn, _) = link::connect(&settings.redis_urls, REDIS_TIMEOUT).await?;
        let usage = UsagePublisher::new(
            conn.clone(),
            &settings.id,
            Arc::clone(status.usage()),
            REDIS_TIMEOUT,
        );
        let registration = Self {
            settings,
            instance: format!("{:016x}", rand::random::<u64>()),
            id_taken: AtomicBool::new(false),
            conn,
            status,
            withdrawn: tokio::sync::Mutex::new(false),
            usage,
        };
        // At start a taken id is an error of its own (the relay exits), not a change to log.
        if let Advertised::IdTaken { urls } = registration.write_record(0).await? {
            let id = registration.settings.id.clone();
            return Err(RegistrationError::IdTaken { id, urls });
        }
        tracing::info!(
            id = %registration.settings.id,
            urls = ?registration.settings.urls,
            "registered in the relay fleet"
        );
        Ok(registration)
    }

    /// This relay's id in the fleet.
    pub fn id(&self) -> &str {
        &self.settings.id
    }

    fn record(&self, bytes_per_sec: u64) -> RelayRecord {
        RelayRecord {
            id: self.settings.id.clone(),
            urls: self.settings.urls.clone(),
            region: self.settings.region.clone(),
            capacity: self.settings.capacity,
            allocations: u64::from(self.status.allocations()),
            bytes_per_sec,
            state: if self.status.is_draining() {
                RelayState::Draining
            } else {
                RelayState::Active
            },
            secret_ids: Some(self.status.secret_ids()),
        }
    }

    /// Writes the record and renews the lease; logs when another relay takes this id, or
    /// leaves it.
    async fn advertise(&self, bytes_per_sec: u64) -> Result<Advertised, StoreError> {
        let advertised = self.write_record(bytes_per_sec).await?;
        let taken = matches!(advertised, Advertised::IdTaken { .. });
        if taken != self.id_taken.swap(taken, Ordering::Relaxed) {
            match &advertised {
                // Both started at once, or Redis lost the first one's record: the other
                // relay holds it now.
                Advertised::IdTaken { urls } => tracing::error!(
                    id = %self.settings.id,
                    other = %urls.join(" "),
                    "another live relay registered this --node-id: this relay is out of the \
                     fleet (it gets no rooms) until that one leaves; give every relay its own \
                     --node-id"
                ),
                Advertised::Written => {
                    tracing::info!(id = %self.settings.id, "registered in the relay fleet again")
                }
            }
        }
        Ok(advertised)
    }

    /// Writes the record and renews the lease, unless withdrawn or another live relay holds
    /// the id (`relays::advertise`).
    async fn write_record(&self, bytes_per_sec: u64) -> Result<Advertised, StoreError> {
        let withdrawn = self.withdrawn.lock().await;
        if *withdrawn {
            return Ok(Advertised::Written);
        }
        let lease = self.settings.lease;
        let now = unix_ms();
        relays::advertise(
            &self.conn,
            &self.record(bytes_per_sec),
            &self.instance,
            (now, now + lease.as_millis() as u64),
            lease,
            REDIS_TIMEOUT,
        )
        .await
    }

    /// Renews the lease with the current load, and publishes the usage, every heartbeat until
    /// `stop` turns true. The two run side by side: a slow publication (a backlog after a
    /// Redis outage) never delays a lease.
    pub async fn run(self: Arc<Self>, stop: watch::Receiver<bool>) {
        let mut publish_stop = stop.clone();
        let publish = async {
            tokio::select! {
                () = self.usage.run(self.settings.heartbeat) => {}
                _ = publish_stop.wait_for(|stopped| *stopped) => {}
            }
        };
        tokio::join!(self.renew_lease(stop), publish);
    }

    /// Renews the lease with the current load every heartbeat until `stop` turns true.
    async fn renew_lease(&self, mut stop: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(self.settings.heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = (Instant::now(), self.status.relayed_bytes());
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            let (now, bytes) = (Instant::now(), self.status.relayed_bytes());
            let elapsed = now.duration_since(last.0).as_secs_f64().max(0.001);
            let rate = (bytes.saturating_sub(last.1) as f64 / elapsed) as u64;
            last = (now, bytes);
            if let Err(e) = self.advertise(rate).await {
                tracing::warn!(error = %e, "could not renew the fleet lease");
            }
            if let Some(agreed) = &self.settings.agreed_turn_secret
                && let Err(e) = self.keep_turn_secret(agreed).await
            {
                tracing::warn!(error = %e, "could not keep the agreed TURN secret in redis");
            }
        }
    }

    /// Writes the agreed TURN secret back if Redis lost it, and renews its time to live.
    async fn keep_turn_secret(&self, agreed: &Secret) -> Result<(), StoreError> {
        let kept = Some(agreed.expose_str());
        fleet::secret::keep_turn_secret(&self.conn, kept, REDIS_TIMEOUT).await?;
        Ok(())
    }

    /// The usage publication of this relay (on every heartbeat; call
    /// [`UsagePublisher::publish_last`] at the stop).
    pub fn usage(&self) -> &UsagePublisher {
        &self.usage
    }

    /// Tells the fleet at once that this relay is draining (call after `begin_drain`): its
    /// rooms move to other relays.
    pub async fn mark_draining(&self) {
        match self.advertise(0).await {
            Ok(Advertised::Written) => tracing::info!("marked draining in the relay fleet"),
            Ok(Advertised::IdTaken { .. }) => {}
            Err(e) => tracing::warn!(error = %e, "could not mark the relay draining"),
        }
    }

    /// Leaves the fleet (a clean stop).
    pub async fn withdraw(&self) {
        let mut withdrawn = self.withdrawn.lock().await;
        *withdrawn = true;
        let (id, instance) = (&self.settings.id, &self.instance);
        if let Err(e) = relays::withdraw(&self.conn, id, instance, REDIS_TIMEOUT).await {
            tracing::warn!(error = %e, "could not leave the relay fleet");
        }
    }
}
