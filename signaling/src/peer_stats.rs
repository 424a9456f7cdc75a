//! Client connection reports (`stats`): each session's latest report per other peer, bounded,
//! and what a new report tells the metrics (the first selected pair of a link: time to ICE
//! connected and its path type). Pure: the time of each report is passed in.

use std::time::{Duration, Instant};

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::protocol::{CandidatePair, ConnectionStats, PeerId};

/// One session's latest report about one other peer.
#[derive(Debug, Clone)]
pub struct LinkReport {
    pub report: ConnectionStats,
    /// When it arrived.
    pub at: Instant,
}

/// The `unknown_peer` answer to a report about `peer`, not another peer of the room.
pub fn unknown_peer_message(peer: &PeerId) -> String {
    format!("no peer {peer} in your room to report on")
}

/// A session's reports, at most one per other peer and at most `capacity` in all (the room's
/// peer limit): a report about a new peer past that replaces the oldest.
#[derive(Debug, Default, Clone)]
pub struct PeerLinks {
    links: Vec<LinkReport>,
    /// Whether any report of this session had a selected pair (time to ICE connected is
    /// observed once per session).
    connected_once: bool,
}

/// What a new report changed, for the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The session's first report with a selected pair.
    pub first_connected: bool,
    /// The link's selected pair when it is new or changed (an ICE outcome to count).
    pub new_pair: Option<CandidatePair>,
}

impl PeerLinks {
    /// The links of a resumed session, as a cluster's Redis kept them (`views`, aged to `now`):
    /// its first connection was already counted, and a pair reported again is no new one.
    pub fn resumed(views: Vec<LinkView>, now: Instant) -> Self {
        let links = views
            .into_iter()
            .map(|view| LinkReport {
                at: now
                    .checked_sub(Duration::from_millis(view.age_ms))
                    .unwrap_or(now),
                report: ConnectionStats {
                    peer: PeerId(view.peer),
                    pair: view.pair,
                    rtt_ms: view.rtt_ms,
                    bytes_sent: view.bytes_sent,
                    bytes_received: view.bytes_received,
                },
            })
            .collect();
        Self {
            links,
            connected_once: true,
        }
    }

    /// Keeps `report` as the latest about its peer.
    pub fn record(&mut self, report: ConnectionStats, now: Instant, capacity: usize) -> Recorded {
        let first_connected = report.pair.is_some() && !self.connected_once;
        self.connected_once |= report.pair.is_some();
        let index = self.links.iter().position(|l| l.report.peer == report.peer);
        let previous_pair = index.and_then(|i| self.links[i].report.pair.clone());
        let new_pair = match (&report.pair, &previous_pair) {
            (Some(pair), Some(old)) if same_path(pair, old) => None,
            (Some(pair), _) => Some(pair.clone()),
            (None, _) => None,
        };
        let entry = LinkReport { report, at: now };
        match index {
            Some(i) => self.links[i] = entry,
            None => {
                if self.links.len() >= capacity.max(1) {
                    let oldest = (0..self.links.len())
                        .min_by_key(|&i| self.links[i].at)
                        .unwrap_or(0);
                    self.links.remove(oldest);
                }
                self.links.push(entry);
            }
        }
        Recorded {
            first_connected,
            new_pair,
        }
    }

    /// Forgets the reports about `peer` (it left the room).
    pub fn forget(&mut self, peer: &PeerId) {
        self.links.retain(|l| &l.report.peer != peer);
    }

    /// The reports, oldest peer first.
    pub fn links(&self) -> &[LinkReport] {
        &self.links
    }
}

fn same_path(a: &CandidatePair, b: &CandidatePair) -> bool {
    a.local == b.local
        && a.remote == b.remote
        && a.protocol == b.protocol
        && a.relay_protocol == b.relay_protocol
}

/// A link as the admin snapshot shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LinkView {
    /// The other peer.
    pub peer: String,
    /// `direct`, `relayed`, or `none` (no selected pair yet).
    pub path: Cow<'static, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pair: Option<CandidatePair>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<u32>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// How long ago the report arrived, in milliseconds.
    pub age_ms: u64,
}

impl LinkReport {
    /// The link as the admin snapshot shows it at `now`.
    pub fn view(&self, now: Instant) -> LinkView {
        let r = &self.report;
        LinkView {
            peer: r.peer.0.clone(),
            path: path_of(r.pair.as_ref()).into(),
            pair: r.pair.clone(),
            rtt_ms: r.rtt_ms,
            bytes_sent: r.bytes_sent,
            bytes_received: r.bytes_received,
            age_ms: millis(now.saturating_duration_since(self.at)),
        }
    }
}

/// `direct`, `relayed`, or `none`.
pub fn path_of(pair: Option<&CandidatePair>) -> &'static str {
    match pair {
        Some(pair) if pair.is_relayed() => "relayed",
        Some(_) => "direct",
        None => "none",
    }
}

/// A duration in whole milliseconds (saturating).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{CandidateType, IceProtocol};

    fn report(peer: &str, pair: Option<(CandidateType, CandidateType)>) -> ConnectionStats {
        ConnectionStats {
            peer: peer.into(),
            pair: pair.map(|(local, remote)| CandidatePair {
                local,
                remote,
                protocol: IceProtocol::Udp,
                relay_protocol: None,
                relay_url: None,
            }),
            rtt_ms: Some(3),
            bytes_sent: 1,
            bytes_received: 2,
        }
    }

    #[test]
    fn one_report_per_peer_bounded_and_first_connection_once() {
        use CandidateType::{Host, Relay};
        let t0 = Instant::now();
        let mut links = PeerLinks::default();
        let r = links.record(report("a", None), t0, 2);
        assert_eq!(
            r,
            Recorded {
                first_connected: false,
                new_pair: None
            }
        );
        let r = links.record(report("a", Some((Host, Host))), t0, 2);
        assert!(r.first_connected && r.new_pair.is_some());
        let r = links.record(report("a", Some((Host, Host))), t0, 2);
        assert!(!r.first_connected && r.new_pair.is_none(), "same path");
        let r = links.record(report("a", Some((Relay, Host))), t0, 2);
        assert!(!r.first_connected && r.new_pair.is_some(), "path changed");
        links.record(report("b", None), t0 + Duration::from_secs(1), 2);
        links.record(report("c", None), t0 + Duration::from_secs(2), 2);
        let peers: Vec<&str> = links
            .links()
            .iter()
            .map(|l| l.report.peer.as_str())
            .collect();
        assert_eq!(peers, ["b", "c"], "the oldest went over capacity");
        links.forget(&"b".into());
        assert_eq!(links.links().len(), 1);
        let view = links.links()[0].view(t0 + Duration::from_secs(3));
        assert_eq!((view.path.as_ref(), view.age_ms), ("none", 1000));
    }
}
