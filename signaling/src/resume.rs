//! Resume tokens. A single node's token is `<session-id>.<secret>`: the session id finds the
//! session, the 128-bit secret is compared in constant time. (A cluster's token also names the
//! peer and the room: see `cluster`.) What a resume replays is the session's
//! [`crate::outbox::Outbox`].

use rand::RngCore as _;
use subtle::ConstantTimeEq as _;

use crate::protocol::ResumeToken;

/// The secret half of a resume token.
#[derive(Clone, Copy)]
pub struct ResumeSecret([u8; 16]);

impl ResumeSecret {
    /// A fresh random secret.
    pub fn generate() -> Self {
        let mut bytes = [0; 16];
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// The token a client presents: `<session-id>.<secret-hex>`.
    pub fn token(&self, session_id: u64) -> ResumeToken {
        ResumeToken(format!("{session_id:016x}.{}", hex::encode(self.0)))
    }

    /// The secret's hex form (the part of a token after the session id).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A secret from its hex form, if it has the right length.
    pub fn from_hex(presented: &str) -> Option<Self> {
        let bytes = hex::decode(presented).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }

    /// Whether `presented` (hex) is this secret, in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        let Ok(bytes) = hex::decode(presented) else {
            return false;
        };
        bytes.len() == self.0.len() && bool::from(bytes.ct_eq(&self.0))
    }
}

impl std::fmt::Debug for ResumeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResumeSecret(<redacted>)")
    }
}

/// Splits a presented token into the session id and the secret's hex, if it has that shape.
pub fn parse_token(token: &ResumeToken) -> Option<(u64, &str)> {
    let (id, secret) = token.as_str().split_once('.')?;
    if id.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(id, 16).ok()?, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_compare() {
        let secret = ResumeSecret::generate();
        let token = secret.token(0xabc);
        let (id, hex) = parse_token(&token).unwrap();
        assert_eq!(id, 0xabc);
        assert!(secret.matches(hex));
        assert!(!secret.matches("00"));
        assert!(!ResumeSecret::generate().matches(hex));
        assert!(parse_token(&ResumeToken::from("nonsense")).is_none());
    }
}
