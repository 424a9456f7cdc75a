//! `Admission`: who may talk to the server before any allocation exists. The long-term and
//! REST credentials (`auth`), the nonces of challenges (`nonce`), and the per-source-IP rate
//! limits of unauthenticated requests and of 401/438 challenges (per shard) and of failed
//! credential checks (for every shard, in `SharedQuotas`), with their sweep deadline.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::auth::{AuthFailure, Authenticator, Identity};
use crate::config::ServerConfig;
use crate::message::StunMessage;
use crate::nonce::{NonceCheck, NonceKeys};
use crate::quota::{IpRateLimiter, SharedQuotas};

/// The admission state of one shard.
#[derive(Debug)]
pub(crate) struct Admission {
    auth: Authenticator,
    nonces: NonceKeys,
    /// Requests without MESSAGE-INTEGRITY per source IP.
    unauthenticated: IpRateLimiter,
    /// 401/438 responses per source IP.
    unauthorized: IpRateLimiter,
    /// Failed credential checks per source IP are counted in `shared.auth_failures`, one table
    /// for every shard.
    shared: Arc<SharedQuotas>,
    /// When the two rate-limit tables are next swept; `None` while both are empty.
    next_sweep: Option<Instant>,
}

impl Admission {
    pub(crate) fn new(config: &ServerConfig, shared: Arc<SharedQuotas>) -> Self {
        let q = &config.quotas;
        shared
            .auth_failures
            .lock()
            .configure(q.auth_failures_per_ip, q.rate_limit_table_size);
        Self {
            auth: Authenticator::new(&config.realm, &config.auth),
            nonces: NonceKeys::new(
                &config.auth.nonce_secret,
                config.auth.nonce_lifetime.as_secs(),
            ),
            unauthenticated: IpRateLimiter::new(q.unauthenticated_per_ip, q.rate_limit_table_size),
            unauthorized: IpRateLimiter::new(q.unauthorized_per_ip, q.rate_limit_table_size),
            shared,
            next_sweep: None,
        }
    }

    /// Takes `config`'s credentials and rate limits (`Server::reconfigure`); nonces already
    /// issued stay valid, and each source keeps its rate state under the new limits.
    pub(crate) fn reconfigure(&mut self, config: &ServerConfig) {
        self.auth = Authenticator::new(&config.realm, &config.auth);
        self.unauthenticated
            .set_limit(config.quotas.unauthenticated_per_ip);
        self.unauthorized
            .set_limit(config.quotas.unauthorized_per_ip);
        self.shared
            .auth_failures
            .lock()
            .set_limit(config.quotas.auth_failures_per_ip);
    }

    /// Whether credentials from `ip` may be checked now: not while it is over its rate of
    /// failed checks (its requests are then dropped unchecked).
    pub(crate) fn may_check_credentials(&mut self, now: Instant, ip: IpAddr) -> bool {
        self.shared.auth_failures.lock().would_allow(now, ip)
    }

    /// Counts a failed credential check from `ip`.
    fn credentials_failed(&mut self, now: Instant, ip: IpAddr) {
        self.arm_sweep(now);
        self.shared.auth_failures.lock().allow(now, ip);
    }

    /// A request without MESSAGE-INTEGRITY from `ip`: within its rate?
    pub(crate) fn allow_unauthenticated(&mut self, now: Instant, ip: IpAddr) -> bool {
        self.arm_sweep(now);
        self.unauthenticated.allow(now, ip)
    }

    /// A 401/438 challenge to `ip`: within its rate?
    pub(crate) fn allow_challenge(&mut self, now: Instant, ip: IpAddr) -> bool {
        self.arm_sweep(now);
        self.unauthorized.allow(now, ip)
    }

    /// A fresh NONCE for `ip`.
    pub(crate) fn issue_nonce(&self, now_unix: u64, ip: IpAddr) -> String {
        self.nonces.issue(now_unix, ip)
    }

    /// True if `nonce` is one of ours, for `ip`, and not expired (else 438).
    pub(crate) fn nonce_is_valid(&self, nonce: &[u8], now_unix: u64, ip: IpAddr) -> bool {
        self.nonces.check(nonce, now_unix, ip) == NonceCheck::Valid
    }

    /// Check MESSAGE-INTEGRITY with `username`'s key. On success the challenge this source
    /// got was answered: legitimate challenge/response traffic (every Allocate starts with
    /// one) gives its rate tokens back, so it cannot starve a busy NAT IP.
    /// A MESSAGE-INTEGRITY that does not match (a wrong password: the only failure that tests a
    /// guess) counts against the source's rate of failed checks; an unknown user or an expired
    /// REST username does not (a client with stale credentials is no guesser).
    pub(crate) fn verify(
        &mut self,
        msg: &StunMessage<'_>,
        username: &str,
        now: Instant,
        now_unix: u64,
        ip: IpAddr,
        expiry_counts: bool,
    ) -> Result<Identity, AuthFailure> {
        let identity = self
            .auth
            .verify(msg, username, now_unix, expiry_counts)
            .inspect_err(|failure| {
                if *failure == AuthFailure::BadIntegrity {
                    self.credentials_failed(now, ip);
                }
            })?;
        self.unauthenticated.refund(ip);
        self.unauthorized.refund(ip);
        Ok(identity)
    }

    /// Sweep the rate-limit tables if their deadline passed.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.next_sweep.is_some_and(|at| now >= at) {
            self.unauthenticated.sweep(now);
            self.unauthorized.sweep(now);
            let failures = {
                let mut failures = self.shared.auth_failures.lock();
                failures.sweep(now);
                failures.len()
            };
            let tracked = self.unauthenticated.len() + self.unauthorized.len() + failures;
            self.next_sweep = (tracked > 0).then(|| now + IpRateLimiter::SWEEP_INTERVAL);
        }
    }

    /// The next sweep, if any.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    fn arm_sweep(&mut self, now: Instant) {
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + IpRateLimiter::SWEEP_INTERVAL);
        }
    }
}
