//! Long-term credentials (RFC 8489 section 9.2): static users and the TURN REST scheme
//! (`username = <expiry-unix>[:<user>]`, `password = base64(HMAC-SHA1(secret, username))`,
//! any of several secrets verifies). Keys are `MD5(username ":" realm ":" password)`; integrity
//! checks are constant-time; nothing here logs.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use md5::{Digest, Md5};
use ring::hmac;

use crate::config::{AuthConfig, StaticCredential};
use crate::message::StunMessage;

/// Longest USERNAME accepted (RFC 8489: < 513 bytes).
pub(crate) const MAX_USERNAME: usize = 512;

/// The long-term key `MD5(username ":" realm ":" password)`.
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

/// The TURN REST password for `username` under `secret`.
pub fn rest_password(secret: &[u8], username: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    STANDARD.encode(hmac::sign(&key, username.as_bytes()).as_ref())
}

/// Why credentials were refused (all answered 401).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuthFailure {
    /// No such static user and not a REST username (or no REST secrets configured).
    UnknownUser,
    /// A REST username whose expiry time has passed.
    Expired,
    /// MESSAGE-INTEGRITY does not match any key.
    BadIntegrity,
}

/// A verified identity.
#[derive(Clone, Debug)]
pub(crate) struct Identity {
    /// The long-term key (signs our responses).
    pub(crate) key: [u8; 16],
    /// The user the allocation quota counts against (the `<user>` of a REST username).
    pub(crate) quota_user: Box<str>,
}

/// Verifies requests against the configured credentials.
pub(crate) struct Authenticator {
    realm: String,
    users: HashMap<String, [u8; 16]>,
    rest_secrets: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("realm", &self.realm)
            .field("users", &self.users.len())
            .field("rest_secrets", &self.rest_secrets.len())
            .finish()
    }
}

impl Authenticator {
    pub(crate) fn new(realm: &str, config: &AuthConfig) -> Self {
        let users = config
            .users
            .iter()
            .map(|(name, cred)| {
                let key = match cred {
                    StaticCredential::Password(p) => long_term_key(name, realm, p),
                    StaticCredential::Key(k) => *k,
                };
                (name.clone(), key)
            })
            .collect();
        Self {
            realm: realm.to_owned(),
            users,
            rest_secrets: config.rest_secrets.clone(),
        }
    }

    /// Verify `msg` (which has MESSAGE-INTEGRITY) for `username` at `now_unix`. A REST
    /// username's expiry counts only when `expiry_counts`: it limits when an allocation may be
    /// made, not how long one made in time may be refreshed (as coturn, and as clients that
    /// keep refreshing with the credentials they allocated with expect).
    pub(crate) fn verify(
        &self,
        msg: &StunMessage<'_>,
        username: &str,
        now_unix: u64,
        expiry_counts: bool,
    ) -> Result<Identity, AuthFailure> {
        if let Some(key) = self.users.get(username) {
            return if msg.verify_integrity(key) {
                Ok(Identity {
                    key: *key,
                    quota_user: username.into(),
                })
            } else {
                Err(AuthFailure::BadIntegrity)
            };
        }
        if self.rest_secrets.is_empty() {
            return Err(AuthFailure::UnknownUser);
        }
        let (expiry, user) = match username.split_once(':') {
            Some((e, u)) => (e, u),
            None => (username, username),
        };
        let Ok(expiry) = expiry.parse::<u64>() else {
            return Err(AuthFailure::UnknownUser);
        };
        if expiry_counts && expiry < now_unix {
            return Err(AuthFailure::Expired);
        }
        for secret in &self.rest_secrets {
            let key = long_term_key(username, &self.realm, &rest_password(secret, username));
            if msg.verify_integrity(&key) {
                return Ok(Identity {
                    key,
                    quota_user: user.into(),
                });
            }
        }
        Err(AuthFailure::BadIntegrity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_term_key_is_md5_of_user_realm_password() {
        // Computed with: printf 'user:realm:pass' | md5sum
        let k = long_term_key("user", "realm", "pass");
        assert_eq!(hex_of(&k), "8493fbc53ba582fb4c044c456bdc40eb");
    }

    #[test]
    fn rest_password_is_base64_hmac_sha1() {
        // Value computed with: printf '1700000000:alice' | openssl dgst -sha1 -hmac secret -binary | base64
        let p = rest_password(b"secret", "1700000000:alice");
        assert_eq!(p, "d8soP47RbdIKLDUOpnJPVQyq5Ts=");
    }

    fn hex_of(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
