//! `ErrorCode`: the STUN/TURN error response codes this server sends or a client may meet,
//! each with the RFC section that defines it and its reason phrase.

wire_code_enum! {
    /// A STUN/TURN error code (the ERROR-CODE attribute, RFC 8489 section 14.8). The server
    /// answers with these; [`crate::attributes::ErrorCodeValue`] keeps any code a peer sends.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum ErrorCode {
        /// 300 Try Alternate (RFC 8489 section 14.8). Never sent by this server.
        TryAlternate = 300,
        /// 400 Bad Request: malformed, or a required attribute is missing or invalid (RFC 8489
        /// section 14.8).
        BadRequest = 400,
        /// 401 Unauthorized: no or wrong credentials; carries REALM and NONCE (RFC 8489 section
        /// 14.8, section 9.2.4).
        Unauthorized = 401,
        /// 403 Forbidden: the peer address is refused by policy (RFC 8656 section 19).
        Forbidden = 403,
        /// 420 Unknown Attribute: a comprehension-required attribute this server does not
        /// understand; lists them in UNKNOWN-ATTRIBUTES (RFC 8489 section 14.8).
        UnknownAttribute = 420,
        /// 437 Allocation Mismatch: an Allocate for a 5-tuple that has one, or a request that
        /// needs one and has none (RFC 8656 section 19).
        AllocationMismatch = 437,
        /// 438 Stale Nonce: retry with the NONCE of this response (RFC 8489 section 14.8).
        StaleNonce = 438,
        /// 440 Address Family not Supported (RFC 8656 section 19).
        AddressFamilyNotSupported = 440,
        /// 441 Wrong Credentials: not the credentials that created the allocation (RFC 8656
        /// section 19).
        WrongCredentials = 441,
        /// 442 Unsupported Transport Protocol: REQUESTED-TRANSPORT is not UDP (RFC 8656 section
        /// 19).
        UnsupportedTransportProtocol = 442,
        /// 443 Peer Address Family Mismatch: the peer is not of the relay address's family (RFC
        /// 8656 section 19).
        PeerAddressFamilyMismatch = 443,
        /// 486 Allocation Quota Reached: per-user or total allocation limit (RFC 8656 section
        /// 19).
        AllocationQuotaReached = 486,
        /// 500 Server Error (RFC 8489 section 14.8). Never sent by this server.
        ServerError = 500,
        /// 508 Insufficient Capacity: no relay port, a quota of permissions or channels, a
        /// reservation gone, or the relay is draining (RFC 8656 section 19).
        InsufficientCapacity = 508,
    }
}

impl ErrorCode {
    /// The reason phrase of the RFCs (sent only on authenticated responses).
    pub const fn reason(self) -> &'static str {
        match self {
            Self::TryAlternate => "Try Alternate",
            Self::BadRequest => "Bad Request",
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden => "Forbidden",
            Self::UnknownAttribute => "Unknown Attribute",
            Self::AllocationMismatch => "Allocation Mismatch",
            Self::StaleNonce => "Stale Nonce",
            Self::AddressFamilyNotSupported => "Address Family not Supported",
            Self::WrongCredentials => "Wrong Credentials",
            Self::UnsupportedTransportProtocol => "Unsupported Transport Protocol",
            Self::PeerAddressFamilyMismatch => "Peer Address Family Mismatch",
            Self::AllocationQuotaReached => "Allocation Quota Reached",
            Self::ServerError => "Server Error",
            Self::InsufficientCapacity => "Insufficient Capacity",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code(), self.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn codes_round_trip_and_are_sorted() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(c.code()), Some(c));
            assert!((300..700).contains(&c.code()));
        }
        assert!(ErrorCode::ALL.windows(2).all(|w| w[0].code() < w[1].code()));
        assert_eq!(ErrorCode::from_code(499), None);
        assert_eq!(ErrorCode::StaleNonce.to_string(), "438 Stale Nonce");
    }
}
