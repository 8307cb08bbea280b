//! JWT verification for tokens carried in the MQTT password field.
//!
//! Signatures (HS256, RS256, ES256) are checked by `jsonwebtoken`; time claims are checked here
//! against the `now` the caller passes, so tests need no clock. Keys come from a secret file, a
//! PEM public key or a JWKS file (a file: this crate does no network I/O). Expensive: never on a
//! shard thread.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::acl::ClaimAcl;
use crate::config::JwtConfig;
use crate::decision::FailureReason;

/// Longest token accepted; longer ones are refused before any parsing.
pub const TOKEN_LEN_MAX: usize = 16 * 1024;
/// The MQTT password field is a two-byte-length binary field (MQTT 5.0 1.5.6).
const PASSWORD_FIELD_LEN_MAX: usize = 65_535;
const _: () = assert!(TOKEN_LEN_MAX <= PASSWORD_FIELD_LEN_MAX);
/// Most keys a JWKS file may hold: a token without `kid` is tried against each matching key.
pub const JWKS_KEYS_MAX: usize = 32;
/// Largest key or JWKS file read.
pub const KEY_FILE_LEN_MAX: u64 = 1024 * 1024;
/// Shortest HS256 secret: RFC 7518 3.2 requires a key at least as long as the hash (256 bits).
pub const HS256_SECRET_LEN_MIN: usize = 32;

/// Why the JWT key material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is larger than {max} bytes")]
    TooLarge { path: String, max: u64 },
    #[error("secret in {path} is {len} bytes; HS256 needs at least {min}")]
    SecretTooShort {
        path: String,
        len: usize,
        min: usize,
    },
    #[error("{path}: not an RSA or EC P-256 public key in PEM")]
    BadPem { path: String },
    #[error("{path}: not a JWKS document: {reason}")]
    BadJwks { path: String, reason: String },
    #[error("{path}: more than {max} keys")]
    TooManyKeys { path: String, max: usize },
    #[error("no key supports the configured algorithms")]
    NoUsableKey,
}

/// What a valid token contributes to the identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenGrant {
    /// The token's `exp` when it has one and the connection is to be closed then
    /// (`close_on_expiry`).
    pub expires_at: Option<SystemTime>,
    /// The token's `exp`, when it has one: the end of its validity, for the cache.
    pub valid_until: Option<SystemTime>,
    /// Topic grants from the configured ACL claim, when present in the token.
    pub claim_acl: Option<ClaimAcl>,
}

/// One verification key.
struct Key {
    /// From the JWKS `kid`; matched against the token header's `kid`.
    id: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Verifies tokens against the configured keys and claim rules. Immutable; reload builds anew.
pub struct JwtVerifier {
    keys: Vec<Key>,
    algorithms: Vec<Algorithm>,
    leeway_secs: u64,
    require_exp: bool,
    issuer: Option<String>,
    audience: Option<String>,
    claims: Vec<(String, String)>,
    acl_claim: Option<String>,
    close_on_expiry: bool,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("keys", &self.keys.len())
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// The algorithms this crate accepts, by their `alg` names.
pub(crate) fn parse_algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "HS256" => Some(Algorithm::HS256),
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        _ => None,
    }
}

fn read_limited(path: &Path) -> Result<Vec<u8>, JwtError> {
    let display = path.display().to_string();
    let read_err = |source| JwtError::Read {
        path: display.clone(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > KEY_FILE_LEN_MAX {
        return Err(JwtError::TooLarge {
            path: display,
            max: KEY_FILE_LEN_MAX,
        });
    }
    std::fs::read(path).map_err(read_err)
}

fn load_secret(path: &Path) -> Result<Vec<Key>, JwtError> {
    let mut secret = read_limited(path)?;
    if secret.ends_with(b"\n") {
        secret.pop();
        if secret.ends_with(b"\r") {
            secret.pop();
        }
    }
    if secret.len() < HS256_SECRET_LEN_MIN {
        return Err(JwtError::SecretTooShort {
            path: path.display().to_string(),
            len: secret.len(),
            min: HS256_SECRET_LEN_MIN,
        });
    }
    Ok(vec![Key {
        id: None,
        algorithm: Algorithm::HS256,
        key: DecodingKey::from_secret(&secret),
    }])
}

fn load_pem(path: &Path) -> Result<Vec<Key>, JwtError> {
    let pem = read_limited(path)?;
    let (algorithm, key) = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        (Algorithm::RS256, key)
    } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        (Algorithm::ES256, key)
    } else {
        return Err(JwtError::BadPem {
            path: path.display().to_string(),
        });
    };
    Ok(vec![Key {
        id: None,
        algorithm,
        key,
    }])
}

fn load_jwks(path: &Path) -> Result<Vec<Key>, JwtError> {
    let display = path.display().to_string();
    let bytes = read_limited(path)?;
    let set: JwkSet = serde_json::from_slice(&bytes).map_err(|err| JwtError::BadJwks {
        path: display.clone(),
        reason: err.to_string(),
    })?;
    if set.keys.len() > JWKS_KEYS_MAX {
        return Err(JwtError::TooManyKeys {
            path: display,
            max: JWKS_KEYS_MAX,
        });
    }
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let inferred = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                Some(Algorithm::ES256)
            }
            AlgorithmParameters::OctetKey(_) => Some(Algorithm::HS256),
            _ => None,
        };
        let declared = match jwk.common.key_algorithm {
            None => inferred,
            Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
            Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
            Some(KeyAlgorithm::HS256) => Some(Algorithm::HS256),
            Some(_) => None,
        };
        // A key whose declared algorithm contradicts its type is skipped, not trusted.
        let (Some(algorithm), true) = (declared, declared == inferred) else {
            tracing::warn!(path = %path.display(), kid = ?jwk.common.key_id, "jwks key skipped: unsupported algorithm");
            continue;
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|err| JwtError::BadJwks {
            path: display.clone(),
            reason: err.to_string(),
        })?;
        keys.push(Key {
            id: jwk.common.key_id.clone(),
            algorithm,
            key,
        });
    }
    Ok(keys)
}

fn resolve(base_dir: &Path, path: &Path) -> std::path::PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

impl JwtVerifier {
    /// Loads the key source named in `config` (paths relative to `base_dir`).
    pub fn load(config: &JwtConfig, base_dir: &Path) -> Result<JwtVerifier, JwtError> {
        let mut keys = if let Some(path) = &config.secret_file {
            load_secret(&resolve(base_dir, path))?
        } else if let Some(path) = &config.public_key_file {
            load_pem(&resolve(base_dir, path))?
        } else if let Some(path) = &config.jwks_file {
            load_jwks(&resolve(base_dir, path))?
        } else {
            Vec::new()
        };
        let algorithms: Vec<Algorithm> = if config.algorithms.is_empty() {
            let mut found = Vec::new();
            for key in &keys {
                if !found.contains(&key.algorithm) {
                    found.push(key.algorithm);
                }
            }
            found
        } else {
            config
                .algorithms
                .iter()
                .filter_map(|name| parse_algorithm(name))
                .collect()
        };
        keys.retain(|key| algorithms.contains(&key.algorithm));
        if keys.is_empty() {
            return Err(JwtError::NoUsableKey);
        }
        Ok(JwtVerifier {
            keys,
            algorithms,
            leeway_secs: config.leeway_secs,
            require_exp: config.require_exp,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            claims: config
                .claims
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
            acl_claim: config.acl_claim.clone(),
            close_on_expiry: config.close_on_expiry,
        })
    }

    /// Verifies `token` for a client. `now` is the wall clock (tokens carry Unix times).
    pub fn verify(
        &self,
        token: &[u8],
        client_id: &str,
        username: Option<&str>,
        now: SystemTime,
    ) -> Result<TokenGrant, FailureReason> {
        if token.len() > TOKEN_LEN_MAX {
            return Err(FailureReason::TokenMalformed);
        }
        let token = std::str::from_utf8(token).map_err(|_| FailureReason::TokenMalformed)?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| FailureReason::TokenMalformed)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(FailureReason::TokenSignature);
        }
        let validation = self.validation(header.alg);
        let mut claims = None;
        let mut last = FailureReason::TokenSignature;
        for key in self.candidates(header.alg, header.kid.as_deref()) {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                Err(err) => {
                    last = map_error(err.kind());
                    // Only a bad signature makes another key worth trying.
                    if last != FailureReason::TokenSignature {
                        return Err(last);
                    }
                }
            }
        }
        let claims = claims.ok_or(last)?;
        let expires_at = self.check_times(&claims, now)?;
        self.check_claims(&claims, client_id, username)?;
        let claim_acl = match self.acl_claim.as_ref().and_then(|name| claims.get(name)) {
            Some(value) => {
                Some(ClaimAcl::from_json(value).map_err(|_| FailureReason::TokenMalformed)?)
            }
            None => None,
        };
        Ok(TokenGrant {
            expires_at: if self.close_on_expiry {
                expires_at
            } else {
                None
            },
            valid_until: expires_at,
            claim_acl,
        })
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        // Time claims are checked in `check_times` against the caller's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let mut required = HashSet::new();
        match &self.issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                required.insert("iss".to_owned());
            }
            None => validation.iss = None,
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.insert("aud".to_owned());
            }
            None => validation.validate_aud = false,
        }
        validation.required_spec_claims = required;
        validation
    }

    fn candidates<'a>(
        &'a self,
        algorithm: Algorithm,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys.iter().filter(move |key| {
            key.algorithm == algorithm
                && match (kid, key.id.as_deref()) {
                    (Some(wanted), Some(id)) => wanted == id,
                    _ => true,
                }
        })
    }

    fn check_times(
        &self,
        claims: &Map<String, Value>,
        now: SystemTime,
    ) -> Result<Option<SystemTime>, FailureReason> {
        let now_secs = now
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_secs())
            .unwrap_or(0);
        let exp = numeric_claim(claims, "exp")?;
        let nbf = numeric_claim(claims, "nbf")?;
        let expires_at = match exp {
            Some(exp) => {
                if now_secs > exp.saturating_add(self.leeway_secs) {
                    return Err(FailureReason::TokenExpired);
                }
                UNIX_EPOCH.checked_add(Duration::from_secs(exp))
            }
            None if self.require_exp => return Err(FailureReason::TokenExpired),
            None => None,
        };
        if let Some(nbf) = nbf {
            if now_secs.saturating_add(self.leeway_secs) < nbf {
                return Err(FailureReason::TokenNotYetValid);
            }
        }
        Ok(expires_at)
    }

    fn check_claims(
        &self,
        claims: &Map<String, Value>,
        client_id: &str,
        username: Option<&str>,
    ) -> Result<(), FailureReason> {
        for (name, template) in &self.claims {
            let expected =
                expand(template, client_id, username).ok_or(FailureReason::TokenClaimMismatch)?;
            match claims.get(name) {
                Some(Value::String(actual)) if *actual == expected => {}
                _ => return Err(FailureReason::TokenClaimMismatch),
            }
        }
        Ok(())
    }
}

/// A NumericDate claim (RFC 7519 2) as whole seconds; negative dates count as 0.
fn numeric_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, FailureReason> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(number)) => {
            if let Some(secs) = number.as_u64() {
                Ok(Some(secs))
            } else if number.as_i64().is_some() {
                Ok(Some(0))
            } else if let Some(float) = number.as_f64() {
                // Fractions are allowed; truncate toward the past for both exp and nbf.
                Ok(Some(if float <= 0.0 { 0 } else { float as u64 }))
            } else {
                Err(FailureReason::TokenMalformed)
            }
        }
        Some(_) => Err(FailureReason::TokenMalformed),
    }
}

/// Expands `%u` and `%c`; `None` when `%u` is used and there is no username.
fn expand(template: &str, client_id: &str, username: Option<&str>) -> Option<String> {
    let mut out = String::with_capacity(template.len());
    let mut chars = template.chars().peekable();
    while let Some(ch) = chars.next() {
        match (ch, chars.peek()) {
            ('%', Some('u')) => {
                chars.next();
                out.push_str(username?);
            }
            ('%', Some('c')) => {
                chars.next();
                out.push_str(client_id);
            }
            _ => out.push(ch),
        }
    }
    Some(out)
}

fn map_error(kind: &ErrorKind) -> FailureReason {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => FailureReason::TokenSignature,
        ErrorKind::ExpiredSignature => FailureReason::TokenExpired,
        ErrorKind::ImmatureSignature => FailureReason::TokenNotYetValid,
        ErrorKind::InvalidIssuer
        | ErrorKind::InvalidAudience
        | ErrorKind::InvalidSubject
        | ErrorKind::MissingRequiredClaim(_) => FailureReason::TokenClaimMismatch,
        _ => FailureReason::TokenMalformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_placeholders() {
        assert_eq!(expand("%u", "c", Some("u")).as_deref(), Some("u"));
        assert_eq!(expand("car-%c", "c1", None).as_deref(), Some("car-c1"));
        assert_eq!(expand("%u", "c", None), None);
        assert_eq!(expand("100%", "c", None).as_deref(), Some("100%"));
    }
}
