//! `Usage`: relayed traffic attributed to the user an allocation was created by (the `<user>`
//! of a TURN REST username, or the static user). Each allocation counts into its own `Usage`
//! on the relay paths (two additions, no lookup); `Server::drain_usage` hands the counts
//! accumulated since the last call to the I/O layer, which aggregates them per user and time
//! bucket. An allocation that ends leaves its last counts in `UnbilledUsage` until the next
//! drain, so nothing relayed is lost.

use std::collections::HashMap;

/// Payload bytes and packets relayed for one user (application data only: the ChannelData,
/// Send/Data indication and UDP headers are not counted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Payload bytes relayed client -> peer.
    pub bytes_to_peer: u64,
    /// Payload bytes relayed peer -> client.
    pub bytes_to_client: u64,
    /// Packets relayed client -> peer.
    pub packets_to_peer: u64,
    /// Packets relayed peer -> client.
    pub packets_to_client: u64,
}

impl Usage {
    /// Nothing was relayed.
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    /// Adds `other` into this one (saturating: counts never wrap).
    pub fn add(&mut self, other: &Self) {
        self.bytes_to_peer = self.bytes_to_peer.saturating_add(other.bytes_to_peer);
        self.bytes_to_client = self.bytes_to_client.saturating_add(other.bytes_to_client);
        self.packets_to_peer = self.packets_to_peer.saturating_add(other.packets_to_peer);
        self.packets_to_client = self
            .packets_to_client
            .saturating_add(other.packets_to_client);
    }

    /// Bytes both ways.
    pub fn bytes(&self) -> u64 {
        self.bytes_to_peer.saturating_add(self.bytes_to_client)
    }

    pub(crate) fn count_to_peer(&mut self, len: u64) {
        self.packets_to_peer += 1;
        self.bytes_to_peer += len;
    }

    pub(crate) fn count_to_client(&mut self, len: u64) {
        self.packets_to_client += 1;
        self.bytes_to_client += len;
    }

    /// Takes back a [`Self::count_to_client`] (a packet that was not sent after all).
    pub(crate) fn uncount_to_client(&mut self, len: u64) {
        self.packets_to_client = self.packets_to_client.saturating_sub(1);
        self.bytes_to_client = self.bytes_to_client.saturating_sub(len);
    }
}

/// The counts of allocations that ended since the last `Server::drain_usage`, per user. At
/// most one entry per user whose allocation ended in that interval (the I/O layer drains
/// every few hundred milliseconds).
#[derive(Debug, Default)]
pub(crate) struct UnbilledUsage {
    ended: HashMap<Box<str>, Usage>,
}

impl UnbilledUsage {
    pub(crate) fn keep(&mut self, user: &str, usage: Usage) {
        if usage.is_zero() {
            return;
        }
        match self.ended.get_mut(user) {
            Some(u) => u.add(&usage),
            None => {
                self.ended.insert(user.into(), usage);
            }
        }
    }

    pub(crate) fn drain(&mut self, sink: &mut impl FnMut(&str, Usage)) {
        for (user, usage) in self.ended.drain() {
            sink(&user, usage);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_and_drains_per_user() {
        let mut unbilled = UnbilledUsage::default();
        let mut a = Usage::default();
        a.count_to_peer(100);
        a.count_to_client(50);
        unbilled.keep("a", a);
        unbilled.keep("a", a);
        unbilled.keep("b", Usage::default());
        let mut seen = Vec::new();
        unbilled.drain(&mut |u, usage| seen.push((u.to_owned(), usage)));
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0, "a");
        assert_eq!(seen[0].1.bytes(), 300);
        assert_eq!(seen[0].1.packets_to_peer, 2);
        unbilled.drain(&mut |_, _| panic!("drained twice"));
    }
}
