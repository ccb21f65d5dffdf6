//! Client tokens: HS256 JWTs that the app's backend (or `natter token`, or
//! the backend gRPC API) signs with the shared secret. `sub` is the user id.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use natter_types::{Error, ErrorCode, Result, UserId};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    iat: u64,
}

/// Signs and verifies client tokens; cheap to clone.
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    default_ttl_secs: u64,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("default_ttl_secs", &self.default_ttl_secs).finish_non_exhaustive()
    }
}

/// Seconds since the Unix epoch (JWT times).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Tokens {
    pub fn new(secret: &[u8], default_ttl_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            default_ttl_secs,
        }
    }

    /// A token for `user` valid for `ttl_secs` (0: the default); returns it
    /// with its expiry in seconds since the epoch.
    pub fn mint(&self, user: &UserId, ttl_secs: u64) -> Result<(String, u64)> {
        let ttl = if ttl_secs == 0 { self.default_ttl_secs } else { ttl_secs };
        let iat = unix_now();
        let claims = Claims { sub: user.to_string(), iat, exp: iat + ttl };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| Error::internal(format!("signing token: {e}")))?;
        Ok((token, claims.exp))
    }

    /// The user a valid token names; UNAUTHENTICATED with the reason otherwise.
    pub fn verify(&self, token: &str) -> Result<(UserId, u64)> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            let why = match e.kind() {
                ErrorKind::ExpiredSignature => "token expired".to_owned(),
                ErrorKind::InvalidSignature => "token signature is invalid".to_owned(),
                ErrorKind::InvalidAlgorithm => "token must be signed with HS256".to_owned(),
                other => format!("token is invalid: {other:?}"),
            };
            Error::new(ErrorCode::Unauthenticated, why)
        })?;
        let user = UserId::parse(&data.claims.sub, "token.sub")
            .map_err(|e| Error::new(ErrorCode::Unauthenticated, e.message))?;
        Ok((user, data.claims.exp))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn mint_then_verify_and_reject_others() {
        let tokens = Tokens::new(b"secret", 3600);
        let alice = UserId::parse("alice", "u").unwrap();
        let (token, exp) = tokens.mint(&alice, 0).unwrap();
        let (user, got_exp) = tokens.verify(&token).unwrap();
        assert_eq!((user, got_exp), (alice.clone(), exp));

        let other = Tokens::new(b"other secret", 3600);
        let err = other.verify(&token).unwrap_err();
        assert_eq!(err.code, ErrorCode::Unauthenticated);
        assert!(err.message.contains("signature"), "{}", err.message);
        assert_eq!(tokens.verify("garbage").unwrap_err().code, ErrorCode::Unauthenticated);

        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims { sub: "alice".into(), iat: 1, exp: 2 },
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert!(tokens.verify(&expired).unwrap_err().message.contains("expired"));
    }
}
