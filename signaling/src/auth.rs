//! Optional HS256 JWT auth: a token grants one room and, optionally, a display name.
//!
//! Claims: `{"room": "ROOM", "name": "NAME" (optional), "exp": UNIX-SECONDS}`. The token comes in
//! the `token` query parameter of the WebSocket URL (checked before the upgrade) or in `join`.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Secret;
use crate::error::RequestError;
use crate::protocol::{ErrorCode, RoomId};

/// What a valid token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The one room the bearer may join.
    pub room: RoomId,
    /// The display name the bearer must use, if the issuer fixed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: u64,
}

/// Verifies tokens signed with the configured secret.
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator(HS256, <redacted>)")
    }
}

impl Authenticator {
    /// An authenticator for HS256 tokens signed with `secret`.
    pub fn new(secret: &Secret) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // Tolerate small clock differences with the issuer, no more.
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp"]);
        Self {
            key: DecodingKey::from_secret(secret.expose()),
            validation,
        }
    }

    /// The claims of a valid, unexpired token; `unauthorized` otherwise.
    pub fn verify(&self, token: &str) -> Result<Claims, RequestError> {
        jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| RequestError::new(ErrorCode::Unauthorized, format!("invalid token: {e}")))
    }
}

/// The claims of an admin token (the backend API): `{"admin": true, "exp": UNIX-SECONDS}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminClaims {
    pub admin: bool,
    pub exp: u64,
}

impl Authenticator {
    /// Whether `token` is a valid, unexpired admin token (`admin: true`).
    pub fn verify_admin(&self, token: &str) -> bool {
        jsonwebtoken::decode::<AdminClaims>(token, &self.key, &self.validation)
            .is_ok_and(|data| data.claims.admin)
    }
}

/// Checks that `claims` grant `room` and `name`; returns the name to use (the token's when it
/// fixes one).
pub fn check_grant(
    claims: &Claims,
    room: &RoomId,
    name: Option<String>,
) -> Result<Option<String>, RequestError> {
    if &claims.room != room {
        return Err(RequestError::new(
            ErrorCode::Forbidden,
            format!("the token grants room {}, not {room}", claims.room),
        ));
    }
    match (&claims.name, name) {
        // The rule of `join`'s `name` holds for the token's too: a name must not pass for
        // another, whoever chose it.
        (Some(granted), _) if !crate::protocol::is_valid_name(granted) => Err(RequestError::new(
            ErrorCode::InvalidName,
            "the token's name claim is not a valid name (1 to 64 characters, without control or \
             invisible formatting characters)",
        )),
        (Some(granted), Some(asked)) if *granted != asked => Err(RequestError::new(
            ErrorCode::Forbidden,
            format!("the token grants the name {granted:?}, not {asked:?}"),
        )),
        (Some(granted), _) => Ok(Some(granted.clone())),
        (None, asked) => Ok(asked),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    fn token(secret: &str, claims: &Claims) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn verifies_signature_expiry_and_grant() {
        let auth = Authenticator::new(&"s3cret".parse().unwrap());
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            room: "r1".into(),
            name: Some("alice".into()),
            exp: now + 60,
        };
        let ok = auth.verify(&token("s3cret", &claims)).unwrap();
        assert_eq!(ok, claims);
        assert_eq!(
            check_grant(&ok, &"r1".into(), None).unwrap(),
            Some("alice".into())
        );
        assert_eq!(
            check_grant(&ok, &"r2".into(), None).unwrap_err().code,
            ErrorCode::Forbidden
        );
        assert_eq!(
            check_grant(&ok, &"r1".into(), Some("bob".into()))
                .unwrap_err()
                .code,
            ErrorCode::Forbidden
        );
        // The token's name follows `join`'s rule: none that can pass for another.
        for bad in ["Bob\u{202e}", "Bob\u{0}x", "\u{200b}", &"n".repeat(65)] {
            let spoofing = Claims {
                name: Some(bad.into()),
                ..claims.clone()
            };
            assert_eq!(
                check_grant(&spoofing, &"r1".into(), None).unwrap_err().code,
                ErrorCode::InvalidName,
                "{bad:?}"
            );
        }
        let wrong_key = auth.verify(&token("other", &claims)).unwrap_err();
        assert_eq!(wrong_key.code, ErrorCode::Unauthorized);
        let expired = Claims {
            exp: now - 120,
            ..claims
        };
        assert_eq!(
            auth.verify(&token("s3cret", &expired)).unwrap_err().code,
            ErrorCode::Unauthorized
        );
        assert!(auth.verify("not.a.jwt").is_err());
    }

    #[test]
    fn admin_tokens_need_the_admin_claim() {
        let auth = Authenticator::new(&"s3cret".parse().unwrap());
        let now = jsonwebtoken::get_current_timestamp();
        let admin = |admin, exp| {
            encode(
                &Header::new(Algorithm::HS256),
                &AdminClaims { admin, exp },
                &EncodingKey::from_secret(b"s3cret"),
            )
            .unwrap()
        };
        assert!(auth.verify_admin(&admin(true, now + 60)));
        assert!(!auth.verify_admin(&admin(false, now + 60)));
        assert!(!auth.verify_admin(&admin(true, now - 120)));
        // A room token is no admin token.
        let room = token(
            "s3cret",
            &Claims {
                room: "r1".into(),
                name: None,
                exp: now + 60,
            },
        );
        assert!(!auth.verify_admin(&room));
    }
}
