//! The shared cluster secret and the HMAC-SHA256 tags that authenticate gossip datagrams and
//! peer-link handshakes. A node without the secret can neither join nor inject routes.

use std::fmt;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Shortest secret accepted: 16 bytes is 128 bits if the file is random bytes.
pub const SECRET_LEN_MIN: usize = 16;
/// Longest secret accepted; HMAC hashes longer keys anyway, this only bounds the read.
pub const SECRET_LEN_MAX: usize = 4096;
/// Length of an authentication tag (full HMAC-SHA256 output).
pub const TAG_LEN: usize = 32;

/// Domain separation so a tag made for one purpose never verifies for another.
pub(crate) const DOMAIN_GOSSIP: &[u8] = b"ringmq-gossip-v1";
pub(crate) const DOMAIN_LINK: &[u8] = b"ringmq-link-v1";

type HmacSha256 = Hmac<Sha256>;

/// Why the secret could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cluster secret file {path} cannot be read: {source}; create it with e.g. `openssl rand -hex 32 > {path}`")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cluster secret is {len} bytes, at least {min} are needed; use e.g. `openssl rand -hex 32`"
    )]
    TooShort { len: usize, min: usize },
    #[error("cluster secret is {len} bytes, at most {max} are accepted")]
    TooLong { len: usize, max: usize },
}

/// The shared secret. `Debug` never prints it.
#[derive(Clone)]
pub struct Secret {
    key: Vec<u8>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.key.len())
    }
}

impl Secret {
    /// Takes the file's bytes; trailing whitespace (the newline an editor or `echo` adds) is not
    /// part of the key, so the same file works however it was written.
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Self, SecretError> {
        let end = bytes
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        let key = &bytes[..end];
        if key.len() < SECRET_LEN_MIN {
            return Err(SecretError::TooShort {
                len: key.len(),
                min: SECRET_LEN_MIN,
            });
        }
        if key.len() > SECRET_LEN_MAX {
            return Err(SecretError::TooLong {
                len: key.len(),
                max: SECRET_LEN_MAX,
            });
        }
        Ok(Self { key: key.to_vec() })
    }

    /// Reads `[cluster] secret_file`.
    pub fn load(path: &Path) -> Result<Self, SecretError> {
        let bytes = std::fs::read(path).map_err(|source| SecretError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_file_bytes(&bytes)
    }

    fn mac(&self, domain: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = match HmacSha256::new_from_slice(&self.key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("hmac takes keys of any length"),
        };
        mac.update(domain);
        mac
    }

    /// Tag over `domain || parts...`, each part length-prefixed so concatenations cannot collide.
    pub(crate) fn tag(&self, domain: &[u8], parts: &[&[u8]]) -> [u8; TAG_LEN] {
        let mut mac = self.mac(domain);
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// Constant-time check of a tag made by [`Secret::tag`].
    pub(crate) fn verify(&self, domain: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
        let mut mac = self.mac(domain);
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.verify_slice(tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_secret_is_refused() {
        assert!(matches!(
            Secret::from_file_bytes(b"short\n"),
            Err(SecretError::TooShort { len: 5, .. })
        ));
        assert!(matches!(
            Secret::from_file_bytes(b""),
            Err(SecretError::TooShort { len: 0, .. })
        ));
    }

    #[test]
    fn trailing_newline_is_not_key() {
        let a = Secret::from_file_bytes(b"0123456789abcdef0123\n").unwrap();
        let b = Secret::from_file_bytes(b"0123456789abcdef0123").unwrap();
        let tag = a.tag(DOMAIN_GOSSIP, &[b"x"]);
        assert!(b.verify(DOMAIN_GOSSIP, &[b"x"], &tag));
        assert!(!b.verify(DOMAIN_LINK, &[b"x"], &tag));
        assert!(!b.verify(DOMAIN_GOSSIP, &[b"y"], &tag));
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = Secret::load(Path::new("/nonexistent/ringmq.key")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ringmq.key"));
    }
}
