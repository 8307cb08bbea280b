//! The `[auth]`, `[auth.jwt]` and `[acl]` configuration sections. Key names are a contract with
//! operators' configs, like the listener keys.
//!
//! ```toml
//! [auth]
//! allow_anonymous = false          # default: true, or false as soon as any auth source is set
//! password_file = "passwd"         # mosquitto_passwd format ($7$, $6$, $argon2id$)
//!
//! [auth.jwt]                       # a JWT in the MQTT password field
//! secret_file = "jwt.secret"       # HS256 shared secret (trailing newline ignored, >= 32 bytes)
//! # public_key_file = "jwt.pem"    # or an RSA (RS256) / EC P-256 (ES256) public key in PEM
//! # jwks_file = "jwks.json"        # or a JWKS file (a file, never a URL); `kid` picks the key
//! algorithms = ["HS256"]           # allowed algorithms; default: the ones the key(s) support
//! leeway_secs = 30                 # clock skew allowed on exp / nbf
//! require_exp = true               # refuse tokens without exp
//! issuer = "fleet-auth"            # optional: iss must equal this
//! audience = "ringmq"              # optional: aud must contain this
//! claims = { sub = "%u", client_id = "%c" }   # claims that must equal these (%u, %c expand)
//! acl_claim = "acl"                # optional: {"pub": [..], "sub": [..], "all": [..]}
//! close_on_expiry = true           # the broker closes the connection at exp
//!
//! [acl]
//! file = "acl"                     # Mosquitto acl_file syntax
//! deny = ["secret/#"]              # filters nobody may subscribe to or receive
//! ```
//! Relative paths are resolved against the directory the caller passes (the config file's).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::acl::{Acl, AclError};
use crate::authenticator::Authenticator;
use crate::jwt::{JwtError, JwtVerifier};
use crate::password::{PasswordFile, PasswordFileError};
use crate::topic;

/// Most leeway on exp / nbf: more would make `exp` meaningless.
pub const JWT_LEEWAY_SECS_MAX: u64 = 3600;
/// Most claims `[auth.jwt] claims` may require.
pub const JWT_REQUIRED_CLAIMS_MAX: usize = 16;

/// A configuration value that is wrong, named by its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    pub key: &'static str,
    pub reason: String,
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        reason: reason.into(),
    }
}

/// Why the policy could not be built from configuration.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("auth.password_file: {0}")]
    Password(#[from] PasswordFileError),
    #[error("auth.jwt: {0}")]
    Jwt(#[from] JwtError),
    #[error("acl: {0}")]
    Acl(#[from] AclError),
}

/// `[auth]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Whether clients without credentials may connect; unset means "true unless an auth source
    /// is configured" (see [`AuthConfig::allow_anonymous_effective`]).
    pub allow_anonymous: Option<bool>,
    /// A Mosquitto password file.
    pub password_file: Option<PathBuf>,
    /// `[auth.jwt]`: tokens in the password field.
    pub jwt: Option<JwtConfig>,
}

/// `[auth.jwt]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// HS256 shared secret, the file's bytes less one trailing newline. One key source only.
    pub secret_file: Option<PathBuf>,
    /// RSA or EC P-256 public key, PEM.
    pub public_key_file: Option<PathBuf>,
    /// A JWKS document (`{"keys": [..]}`) on disk.
    pub jwks_file: Option<PathBuf>,
    /// Allowed `alg` values among HS256, RS256, ES256; empty = what the keys support.
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// Refuse tokens without `exp`.
    #[serde(default = "default_true")]
    pub require_exp: bool,
    /// `iss` must equal this when set.
    pub issuer: Option<String>,
    /// `aud` must contain this when set.
    pub audience: Option<String>,
    /// Claim name to required value; `%u` and `%c` expand to the username and client id.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    /// The claim carrying topic grants, `{"pub": [..], "sub": [..], "all": [..]}`.
    pub acl_claim: Option<String>,
    /// Whether the identity carries the token's expiry so the broker closes the connection then.
    #[serde(default = "default_true")]
    pub close_on_expiry: bool,
}

fn default_leeway_secs() -> u64 {
    30
}

fn default_true() -> bool {
    true
}

/// `[acl]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclConfig {
    /// A Mosquitto ACL file; when set, anything it does not grant is refused.
    pub file: Option<PathBuf>,
    /// Topic filters nobody may subscribe to (SUBACK 0x80 / 0x87) or receive.
    #[serde(default)]
    pub deny: Vec<String>,
}

fn resolve(base_dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

fn check_path(key: &'static str, path: &Option<PathBuf>) -> Result<(), ConfigError> {
    match path {
        Some(path) if path.as_os_str().is_empty() => Err(invalid(key, "path is empty")),
        _ => Ok(()),
    }
}

impl AuthConfig {
    /// Whether a password file or JWT verification is configured.
    pub fn has_source(&self) -> bool {
        self.password_file.is_some() || self.jwt.is_some()
    }

    /// `allow_anonymous` as set, else false when any auth source (including a listener that
    /// takes the username from client certificates) is configured, else true.
    pub fn allow_anonymous_effective(&self, certificate_identity: bool) -> bool {
        self.allow_anonymous
            .unwrap_or(!(self.has_source() || certificate_identity))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        check_path("auth.password_file", &self.password_file)?;
        if let Some(jwt) = &self.jwt {
            jwt.validate()?;
        }
        Ok(())
    }

    /// Validates and loads the files into an [`Authenticator`]. Call again to reload.
    pub fn load(
        &self,
        base_dir: &Path,
        certificate_identity: bool,
    ) -> Result<Authenticator, LoadError> {
        self.validate()?;
        let passwords = match &self.password_file {
            Some(path) => Some(PasswordFile::load(&resolve(base_dir, path))?),
            None => None,
        };
        let jwt = match &self.jwt {
            Some(jwt) => Some(JwtVerifier::load(jwt, base_dir)?),
            None => None,
        };
        Ok(Authenticator::new(
            self.allow_anonymous_effective(certificate_identity),
            passwords,
            jwt,
        ))
    }
}

impl JwtConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let sources = [&self.secret_file, &self.public_key_file, &self.jwks_file];
        if sources.iter().filter(|source| source.is_some()).count() != 1 {
            return Err(invalid(
                "auth.jwt",
                "set exactly one of secret_file, public_key_file, jwks_file",
            ));
        }
        check_path("auth.jwt.secret_file", &self.secret_file)?;
        check_path("auth.jwt.public_key_file", &self.public_key_file)?;
        check_path("auth.jwt.jwks_file", &self.jwks_file)?;
        for name in &self.algorithms {
            if crate::jwt::parse_algorithm(name).is_none() {
                return Err(invalid(
                    "auth.jwt.algorithms",
                    format!("{name:?} is not one of HS256, RS256, ES256"),
                ));
            }
        }
        if self.leeway_secs > JWT_LEEWAY_SECS_MAX {
            return Err(invalid(
                "auth.jwt.leeway_secs",
                format!("{} is more than {JWT_LEEWAY_SECS_MAX}", self.leeway_secs),
            ));
        }
        if self.claims.len() > JWT_REQUIRED_CLAIMS_MAX {
            return Err(invalid(
                "auth.jwt.claims",
                format!("more than {JWT_REQUIRED_CLAIMS_MAX} claims"),
            ));
        }
        if self.claims.keys().any(String::is_empty) {
            return Err(invalid("auth.jwt.claims", "empty claim name"));
        }
        if self.acl_claim.as_deref() == Some("") {
            return Err(invalid("auth.jwt.acl_claim", "empty claim name"));
        }
        Ok(())
    }
}

impl AclConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_path("acl.file", &self.file)?;
        for (index, rule) in self.deny.iter().enumerate() {
            if !topic::is_valid_filter(rule) {
                return Err(invalid(
                    "acl.deny",
                    format!("rule {index} ({rule:?}) is not a valid topic filter"),
                ));
            }
        }
        Ok(())
    }

    /// Validates and loads the ACL file and deny list into an [`Acl`]. Call again to reload.
    pub fn load(&self, base_dir: &Path) -> Result<Acl, LoadError> {
        self.validate()?;
        let acl = match &self.file {
            Some(path) => Acl::load_file(&resolve(base_dir, path))?,
            None => Acl::allow_all(),
        };
        Ok(acl.with_deny_filters(&self.deny)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_defaults() {
        let auth: AuthConfig = toml::from_str("").unwrap();
        assert!(auth.allow_anonymous_effective(false));
        assert!(!auth.allow_anonymous_effective(true));
        let auth: AuthConfig = toml::from_str("password_file = \"p\"\n").unwrap();
        assert!(!auth.allow_anonymous_effective(false));
        let auth: AuthConfig =
            toml::from_str("password_file = \"p\"\nallow_anonymous = true\n").unwrap();
        assert!(auth.allow_anonymous_effective(false));
        let auth: AuthConfig = toml::from_str(
            "[jwt]\nsecret_file = \"s\"\nclaims = { sub = \"%u\" }\nacl_claim = \"acl\"\n",
        )
        .unwrap();
        assert!(!auth.allow_anonymous_effective(false));
        let jwt = auth.jwt.as_ref().unwrap();
        assert_eq!(jwt.leeway_secs, 30);
        assert!(jwt.require_exp && jwt.close_on_expiry);
        auth.validate().unwrap();
        assert!(toml::from_str::<AuthConfig>("passwd_file = \"p\"\n").is_err());
    }

    #[test]
    fn validate_names_keys() {
        let auth: AuthConfig = toml::from_str("[jwt]\n").unwrap();
        assert_eq!(auth.validate().unwrap_err().key, "auth.jwt");
        let auth: AuthConfig =
            toml::from_str("[jwt]\nsecret_file = \"s\"\nalgorithms = [\"none\"]\n").unwrap();
        assert_eq!(auth.validate().unwrap_err().key, "auth.jwt.algorithms");
        let auth: AuthConfig =
            toml::from_str("[jwt]\nsecret_file = \"s\"\nleeway_secs = 99999\n").unwrap();
        assert_eq!(auth.validate().unwrap_err().key, "auth.jwt.leeway_secs");
        let acl: AclConfig = toml::from_str("deny = [\"a/#/b\"]\n").unwrap();
        assert_eq!(acl.validate().unwrap_err().key, "acl.deny");
        let acl: AclConfig = toml::from_str("file = \"\"\n").unwrap();
        assert_eq!(acl.validate().unwrap_err().key, "acl.file");
    }
}
