//! `OwnAddresses`: the relay host's own IPs and listening addresses as the server learns them
//! at run time (from 5-tuples and bound relay sockets), on top of the configured ones, so that
//! the peer policy refuses them while `ServerConfig` stays what it was given.

use std::net::{IpAddr, SocketAddr};

use crate::policy::{DenyReason, PeerPolicy};

/// Bound on each list: a host has a handful of addresses; a bug must not grow it forever.
const MAX_LEARNED: usize = 64;

/// The host's own addresses, as far as one shard knows them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnAddresses {
    /// `PeerPolicy::own_ips` plus relay, listening and advertised IPs seen since.
    ips: Vec<IpAddr>,
    /// `PeerPolicy::listen_addresses` plus the server side of every 5-tuple seen since.
    listen: Vec<SocketAddr>,
    /// The IPs of relay sockets bound and advertised since: the own IPs that relay-to-relay
    /// traffic goes to, exempt from the range check (a listening IP alone is not).
    relay_ips: Vec<IpAddr>,
}

impl OwnAddresses {
    /// The configured addresses of `policy`.
    pub(crate) fn new(policy: &PeerPolicy) -> Self {
        Self {
            ips: policy.own_ips.clone(),
            listen: policy.listen_addresses.clone(),
            relay_ips: Vec::new(),
        }
    }

    /// Own IPs (see `PeerPolicy::own_ips`).
    pub fn ips(&self) -> &[IpAddr] {
        &self.ips
    }

    /// Listening addresses (see `PeerPolicy::listen_addresses`).
    pub fn listen_addresses(&self) -> &[SocketAddr] {
        &self.listen
    }

    /// Remember the addresses of a new allocation: the listener its client used, its relay
    /// socket and the address advertised for it.
    pub(crate) fn learn(&mut self, listen: SocketAddr, relay: SocketAddr, advertised: SocketAddr) {
        if !self.listen.contains(&listen) && self.listen.len() < MAX_LEARNED {
            self.listen.push(listen);
        }
        for ip in [listen.ip(), relay.ip(), advertised.ip()] {
            if !ip.is_unspecified() && !self.ips.contains(&ip) && self.ips.len() < MAX_LEARNED {
                self.ips.push(ip);
            }
        }
        for ip in [relay.ip(), advertised.ip()] {
            if !ip.is_unspecified()
                && !self.relay_ips.contains(&ip)
                && self.relay_ips.len() < MAX_LEARNED
            {
                self.relay_ips.push(ip);
            }
        }
    }

    /// `policy.check_ip` (a permission) with these addresses as the host's own.
    pub(crate) fn check_permission(
        &self,
        policy: &PeerPolicy,
        ip: IpAddr,
    ) -> Result<(), DenyReason> {
        policy.check_ip_with(ip, &self.relay_ips)
    }

    /// `policy.check_addr` with these addresses instead of the configured ones.
    pub(crate) fn check_peer(
        &self,
        policy: &PeerPolicy,
        addr: SocketAddr,
    ) -> Result<(), DenyReason> {
        policy.check_addr_with(addr, &self.ips, &self.relay_ips, &self.listen)
    }
}
