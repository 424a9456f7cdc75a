//! Perfect negotiation (W3C WebRTC §10.7) as a small state machine with no I/O.
//!
//! Each side of a pair gets a role from the signaling server: the *polite* peer yields when
//! offers collide (it rolls its own offer back and answers), the *impolite* peer ignores the
//! colliding offer and waits for the answer to its own. ICE candidates that arrive before a
//! remote description has been applied are queued and handed back once it is; candidates that
//! belong to an ignored offer are dropped. The connection module performs the decisions.

use signaling::protocol::IceCandidate;

/// What to do with an incoming offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OfferDecision {
    /// Impolite side, collision: drop the offer (and its candidates).
    Ignore,
    /// Apply it. `rollback_first` when our own pending offer must be rolled back first.
    Accept { rollback_first: bool },
}

/// What to do with an incoming candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CandidateDecision {
    /// Add it to the ICE agent now.
    Apply(IceCandidate),
    /// No remote description yet: it was queued.
    Queued,
    /// It belongs to an offer we ignored.
    Drop,
}

/// Per-remote-peer negotiation state.
#[derive(Debug)]
pub(crate) struct Negotiation {
    polite: bool,
    making_offer: bool,
    ignore_offer: bool,
    has_remote_description: bool,
    queued: Vec<IceCandidate>,
}

impl Negotiation {
    pub(crate) fn new(polite: bool) -> Self {
        Self {
            polite,
            making_offer: false,
            ignore_offer: false,
            has_remote_description: false,
            queued: Vec::new(),
        }
    }

    /// Whether we are the polite side.
    pub(crate) fn polite(&self) -> bool {
        self.polite
    }

    /// The server may restate the role (e.g. after a re-join).
    pub(crate) fn set_polite(&mut self, polite: bool) {
        self.polite = polite;
    }

    /// We start (`true`) or finish (`false`) creating and sending an offer.
    pub(crate) fn set_making_offer(&mut self, making: bool) {
        self.making_offer = making;
    }

    /// An offer arrived. `stable` is whether our signaling state is `stable` (no pending
    /// local or remote offer).
    pub(crate) fn on_offer(&mut self, stable: bool) -> OfferDecision {
        let collision = self.making_offer || !stable;
        self.ignore_offer = !self.polite && collision;
        if self.ignore_offer {
            OfferDecision::Ignore
        } else {
            OfferDecision::Accept {
                rollback_first: !stable,
            }
        }
    }

    /// An answer arrived: it always belongs to our own offer.
    pub(crate) fn on_answer(&mut self) {
        self.ignore_offer = false;
    }

    /// A remote description (offer or answer) was applied: returns the queued candidates.
    pub(crate) fn remote_description_applied(&mut self) -> Vec<IceCandidate> {
        self.has_remote_description = true;
        std::mem::take(&mut self.queued)
    }

    /// A candidate arrived.
    pub(crate) fn on_candidate(&mut self, candidate: IceCandidate) -> CandidateDecision {
        if self.ignore_offer {
            CandidateDecision::Drop
        } else if !self.has_remote_description {
            self.queued.push(candidate);
            CandidateDecision::Queued
        } else {
            CandidateDecision::Apply(candidate)
        }
    }

    /// Whether candidate errors are expected (they belong to an ignored offer).
    pub(crate) fn ignoring_offer(&self) -> bool {
        self.ignore_offer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(n: u16) -> IceCandidate {
        IceCandidate {
            candidate: format!("candidate:{n} 1 udp 1 127.0.0.1 {n} typ host"),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
            username_fragment: None,
        }
    }

    #[test]
    fn offers_without_collision_are_accepted_by_both_roles() {
        for polite in [false, true] {
            let mut n = Negotiation::new(polite);
            assert_eq!(
                n.on_offer(true),
                OfferDecision::Accept {
                    rollback_first: false
                }
            );
        }
    }

    #[test]
    fn impolite_side_ignores_a_colliding_offer_and_its_candidates() {
        let mut n = Negotiation::new(false);
        n.remote_description_applied();
        n.set_making_offer(true);
        assert_eq!(n.on_offer(true), OfferDecision::Ignore);
        assert_eq!(n.on_candidate(candidate(1)), CandidateDecision::Drop);
        n.set_making_offer(false);
        // Also a collision when our offer is out but unanswered.
        assert_eq!(n.on_offer(false), OfferDecision::Ignore);
        // The answer to our own offer ends the ignoring.
        n.on_answer();
        assert_eq!(
            n.on_candidate(candidate(2)),
            CandidateDecision::Apply(candidate(2))
        );
    }

    #[test]
    fn polite_side_rolls_back_on_collision() {
        let mut n = Negotiation::new(true);
        assert_eq!(
            n.on_offer(false),
            OfferDecision::Accept {
                rollback_first: true
            }
        );
        n.set_making_offer(true);
        assert_eq!(
            n.on_offer(true),
            OfferDecision::Accept {
                rollback_first: false
            }
        );
    }

    #[test]
    fn candidates_before_the_remote_description_are_queued_in_order() {
        let mut n = Negotiation::new(true);
        assert_eq!(n.on_candidate(candidate(1)), CandidateDecision::Queued);
        assert_eq!(n.on_candidate(candidate(2)), CandidateDecision::Queued);
        assert_eq!(
            n.remote_description_applied(),
            vec![candidate(1), candidate(2)]
        );
        assert_eq!(
            n.on_candidate(candidate(3)),
            CandidateDecision::Apply(candidate(3))
        );
        assert!(n.remote_description_applied().is_empty());
    }

    #[test]
    fn exactly_one_side_of_a_glare_yields() {
        // Both sides made an offer at once: the impolite one ignores, the polite one yields.
        let mut a = Negotiation::new(false);
        let mut b = Negotiation::new(true);
        a.set_making_offer(true);
        b.set_making_offer(true);
        let da = a.on_offer(false);
        let db = b.on_offer(false);
        assert_eq!(da, OfferDecision::Ignore);
        assert_eq!(
            db,
            OfferDecision::Accept {
                rollback_first: true
            }
        );
        assert!(a.ignoring_offer() && !b.ignoring_offer());
        assert!(!a.polite() && b.polite());
    }
}
