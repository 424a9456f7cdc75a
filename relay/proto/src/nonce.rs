//! Stateless NONCEs (RFC 8489 section 9.2): `base64url(expiry_unix_be32 || HMAC-SHA1(secret,
//! expiry || client IP)[..12])`. A nonce carries its own expiry and is bound to the client IP,
//! so there is no nonce table to grow or sweep, and shards sharing the secret accept each
//! other's nonces.

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use subtle::ConstantTimeEq;

const MAC_LEN: usize = 12;
const RAW_LEN: usize = 4 + MAC_LEN;
/// Encoded nonce length (22 characters).
pub(crate) const NONCE_LEN: usize = (RAW_LEN * 4).div_ceil(3);

/// Result of checking a client's NONCE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NonceCheck {
    /// Issued by us for this IP and not expired.
    Valid,
    /// Issued by us for this IP but expired: 438.
    Expired,
    /// Not a nonce of ours (or another IP's): 438 as well.
    Invalid,
}

/// Issues and checks nonces with one secret.
pub(crate) struct NonceKeys {
    key: hmac::Key,
    lifetime_secs: u64,
}

impl std::fmt::Debug for NonceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKeys(<redacted>)")
    }
}

impl NonceKeys {
    pub(crate) fn new(secret: &[u8], lifetime_secs: u64) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret),
            lifetime_secs: lifetime_secs.max(1),
        }
    }

    /// A fresh nonce for `client`, valid until `now_unix + lifetime`.
    pub(crate) fn issue(&self, now_unix: u64, client: IpAddr) -> String {
        let expiry = u32::try_from(now_unix.saturating_add(self.lifetime_secs)).unwrap_or(u32::MAX);
        let mut raw = [0u8; RAW_LEN];
        raw[..4].copy_from_slice(&expiry.to_be_bytes());
        let mac = self.mac(expiry, client);
        raw[4..].copy_from_slice(&mac.as_ref()[..MAC_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Check a nonce presented by `client` (constant-time MAC comparison).
    pub(crate) fn check(&self, nonce: &[u8], now_unix: u64, client: IpAddr) -> NonceCheck {
        if nonce.len() != NONCE_LEN {
            return NonceCheck::Invalid;
        }
        let mut raw = [0u8; RAW_LEN + 2];
        let Ok(n) = URL_SAFE_NO_PAD.decode_slice(nonce, &mut raw) else {
            return NonceCheck::Invalid;
        };
        if n != RAW_LEN {
            return NonceCheck::Invalid;
        }
        let expiry = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let mac = self.mac(expiry, client);
        if !bool::from(mac.as_ref()[..MAC_LEN].ct_eq(&raw[4..RAW_LEN])) {
            return NonceCheck::Invalid;
        }
        if u64::from(expiry) < now_unix {
            NonceCheck::Expired
        } else {
            NonceCheck::Valid
        }
    }

    fn mac(&self, expiry: u32, client: IpAddr) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&expiry.to_be_bytes());
        match crate::policy::canonical_ip(client) {
            IpAddr::V4(ip) => ctx.update(&ip.octets()),
            IpAddr::V6(ip) => ctx.update(&ip.octets()),
        }
        ctx.sign()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::ip;

    #[test]
    fn nonces_verify_expire_and_bind_to_the_client_ip() {
        let keys = NonceKeys::new(b"secret", 600);
        let [a, b] = ["192.0.2.1", "192.0.2.2"].map(ip);
        let n = keys.issue(1_000_000, a);
        assert_eq!(n.len(), NONCE_LEN);
        assert_eq!(keys.check(n.as_bytes(), 1_000_000, a), NonceCheck::Valid);
        assert_eq!(keys.check(n.as_bytes(), 1_000_600, a), NonceCheck::Valid);
        assert_eq!(keys.check(n.as_bytes(), 1_000_601, a), NonceCheck::Expired);
        assert_eq!(keys.check(n.as_bytes(), 1_000_000, b), NonceCheck::Invalid);
        let other = NonceKeys::new(b"other", 600);
        assert_eq!(other.check(n.as_bytes(), 1_000_000, a), NonceCheck::Invalid);
        assert_eq!(keys.check(b"garbage", 1_000_000, a), NonceCheck::Invalid);
        assert_eq!(
            keys.check(&[b'!'; NONCE_LEN], 1_000_000, a),
            NonceCheck::Invalid
        );
    }
}
