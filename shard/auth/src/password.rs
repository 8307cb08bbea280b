//! Password files in Mosquitto's format: one `username:hash` per line.
//!
//! Hash formats accepted, as `mosquitto_passwd` and Mosquitto 2.1 write them:
//! - `$7$<iterations>$<salt b64>$<hash b64>`: PBKDF2-HMAC-SHA512 (the 2.0 default, `-H
//!   sha512-pbkdf2`);
//! - `$6$<salt b64>$<hash b64>`: SHA-512 of password then salt (`-H sha512`, the 1.x default);
//! - `$argon2id$v=19$m=..,t=..,p=..$<salt>$<hash>`: a PHC string (Mosquitto 2.1).
//!
//! Plain-text passwords are refused at load. Comparison is constant time (`subtle` for `$6$` /
//! `$7$`, the `argon2` crate's own verify for PHC strings), and an unknown user costs the same
//! PBKDF2 work as a known one so response time does not reveal which usernames exist.
//! A reload parses the new file into a new [`PasswordFile`]; the caller swaps it in atomically.

use std::path::Path;

use ahash::AHashMap;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// Largest password file read: far above any real fleet's file, small enough to parse at once.
pub const PASSWORD_FILE_LEN_MAX: u64 = 64 * 1024 * 1024;
/// Most entries one file may hold.
pub const PASSWORD_ENTRIES_MAX: usize = 1_000_000;
/// Most PBKDF2 iterations a `$7$` entry may ask for: bounds the CPU one login can cost.
pub const PBKDF2_ITERATIONS_MAX: u32 = 1_000_000;
/// Most memory (KiB) an argon2 entry may ask for per verification: 256 MiB.
pub const ARGON2_MEMORY_KIB_MAX: u32 = 256 * 1024;
/// Most argon2 passes an entry may ask for.
pub const ARGON2_TIME_COST_MAX: u32 = 64;
/// Longest salt or hash (decoded bytes) in a `$6$` / `$7$` entry.
const HASH_PART_LEN_MAX: usize = 1024;

/// Why a password file could not be loaded. Messages name the line, never the secret.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    #[error("cannot read password file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("password file {path} is {len} bytes, more than the {max} allowed")]
    TooLarge { path: String, len: u64, max: u64 },
    #[error("password file has more than {max} entries")]
    TooManyEntries { max: usize },
    #[error("password file line {line}: {reason}")]
    Line { line: usize, reason: &'static str },
}

/// A parsed hash, ready to verify against.
#[derive(Clone)]
enum StoredHash {
    Sha512 {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Pbkdf2Sha512 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    /// A PHC string; parsed again at verification (the argon2 crate borrows from it).
    Argon2(String),
}

impl StoredHash {
    fn parse(text: &str) -> Result<StoredHash, &'static str> {
        if text.starts_with("$argon2") {
            return parse_argon2(text);
        }
        let mut parts = text.split('$');
        if parts.next() != Some("") {
            return Err("not a hashed password (run mosquitto_passwd -U on the file)");
        }
        match parts.next() {
            Some("6") => {
                let salt = decode_part(parts.next(), "salt")?;
                let hash = decode_part(parts.next(), "hash")?;
                if parts.next().is_some() {
                    return Err("extra fields after the $6$ hash");
                }
                if hash.len() != 64 {
                    return Err("a $6$ hash must be 64 bytes");
                }
                Ok(StoredHash::Sha512 { salt, hash })
            }
            Some("7") => {
                let iterations: u32 = parts
                    .next()
                    .and_then(|text| text.parse().ok())
                    .ok_or("$7$ iterations is not a number")?;
                if iterations == 0 || iterations > PBKDF2_ITERATIONS_MAX {
                    return Err("$7$ iterations out of range (1..=1000000)");
                }
                let salt = decode_part(parts.next(), "salt")?;
                let hash = decode_part(parts.next(), "hash")?;
                if parts.next().is_some() {
                    return Err("extra fields after the $7$ hash");
                }
                if hash.is_empty() {
                    return Err("empty $7$ hash");
                }
                Ok(StoredHash::Pbkdf2Sha512 {
                    iterations,
                    salt,
                    hash,
                })
            }
            _ => Err("unknown hash type (expected $6$, $7$ or $argon2id$)"),
        }
    }

    fn verify(&self, password: &[u8]) -> bool {
        match self {
            StoredHash::Sha512 { salt, hash } => {
                let mut digest = Sha512::new();
                digest.update(password);
                digest.update(salt);
                bool::from(digest.finalize().as_slice().ct_eq(hash))
            }
            StoredHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                let mut derived = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut derived);
                bool::from(derived.as_slice().ct_eq(hash))
            }
            StoredHash::Argon2(phc) => verify_argon2(phc, password),
        }
    }
}

fn decode_part(part: Option<&str>, what: &'static str) -> Result<Vec<u8>, &'static str> {
    let part = part.ok_or(match what {
        "salt" => "missing salt",
        _ => "missing hash",
    })?;
    if part.len() > HASH_PART_LEN_MAX * 2 {
        return Err("salt or hash too long");
    }
    STANDARD
        .decode(part)
        .map_err(|_| "salt or hash is not valid base64")
}

fn parse_argon2(text: &str) -> Result<StoredHash, &'static str> {
    use argon2::password_hash::PasswordHash;
    let parsed = PasswordHash::new(text).map_err(|_| "malformed argon2 PHC string")?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err("only argon2id PHC strings are accepted");
    }
    let params = argon2::Params::try_from(&parsed).map_err(|_| "bad argon2 parameters")?;
    if params.m_cost() > ARGON2_MEMORY_KIB_MAX {
        return Err("argon2 memory cost above 256 MiB");
    }
    if params.t_cost() > ARGON2_TIME_COST_MAX {
        return Err("argon2 time cost above 64");
    }
    if parsed.hash.is_none() {
        return Err("argon2 PHC string without a hash");
    }
    Ok(StoredHash::Argon2(text.to_owned()))
}

fn verify_argon2(phc: &str, password: &[u8]) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    // Parsed at load, so this only fails if the string changed, which it cannot.
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    argon2::Argon2::default()
        .verify_password(password, &parsed)
        .is_ok()
}

/// Verified against when the username is unknown, so that case costs what a real check costs.
/// `$7$` of a random password with mosquitto_passwd's defaults (101 iterations, 12-byte salt).
const DUMMY_HASH: &str = "$7$101$kxWuoSOEAdSZiOeP$iRYZtiTPrHYzjCGboNMa/X80R+7li4JIW8P24ceolThb4iMGKVQUkuda6UdNW/aPV+XNuL2eWO8llmLwJmDcXg==";

/// The outcome of [`PasswordFile::verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordCheck {
    Valid,
    WrongPassword,
    UnknownUser,
}

/// A parsed password file: usernames to stored hashes.
#[derive(Clone, Default)]
pub struct PasswordFile {
    entries: AHashMap<String, StoredHash>,
}

impl std::fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordFile")
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl PasswordFile {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<PasswordFile, PasswordFileError> {
        let display = path.display().to_string();
        let read_err = |source| PasswordFileError::Read {
            path: display.clone(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read_err)?.len();
        if len > PASSWORD_FILE_LEN_MAX {
            return Err(PasswordFileError::TooLarge {
                path: display,
                len,
                max: PASSWORD_FILE_LEN_MAX,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        PasswordFile::parse(&text)
    }

    /// Parses file text. Blank lines and lines starting with `#` are skipped; a later entry for
    /// the same username replaces an earlier one (as Mosquitto does).
    pub fn parse(text: &str) -> Result<PasswordFile, PasswordFileError> {
        let mut entries = AHashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line_number = index + 1;
            let line = raw.trim_end_matches(['\r', ' ', '\t']);
            if line.trim_start().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let line_err = |reason| PasswordFileError::Line {
                line: line_number,
                reason,
            };
            let (username, hash) = line
                .split_once(':')
                .ok_or_else(|| line_err("expected username:hash"))?;
            if username.is_empty() {
                return Err(line_err("empty username"));
            }
            let hash = StoredHash::parse(hash).map_err(line_err)?;
            if entries.len() >= PASSWORD_ENTRIES_MAX && !entries.contains_key(username) {
                return Err(PasswordFileError::TooManyEntries {
                    max: PASSWORD_ENTRIES_MAX,
                });
            }
            entries.insert(username.to_owned(), hash);
        }
        Ok(PasswordFile { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, username: &str) -> bool {
        self.entries.contains_key(username)
    }

    /// Checks `password` for `username`. Expensive (PBKDF2 / argon2): never on a shard thread.
    pub fn verify(&self, username: &str, password: &[u8]) -> PasswordCheck {
        match self.entries.get(username) {
            Some(stored) if stored.verify(password) => PasswordCheck::Valid,
            Some(_) => PasswordCheck::WrongPassword,
            None => {
                if let Ok(dummy) = StoredHash::parse(DUMMY_HASH) {
                    let _ = dummy.verify(password);
                }
                PasswordCheck::UnknownUser
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dummy_hash_parses() {
        assert!(StoredHash::parse(DUMMY_HASH).is_ok());
    }

    #[test]
    fn bad_lines_report_their_number_not_the_secret() {
        let text = "# comment\n\nalice:$7$101$c2FsdA==$aGFzaA==\nbob:plaintextsecret\n";
        let err = PasswordFile::parse(text).unwrap_err().to_string();
        assert!(err.contains("line 4"), "{err}");
        assert!(!err.contains("plaintextsecret"), "{err}");
        let err = PasswordFile::parse("nocolon\n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        let err = PasswordFile::parse("a:$7$0$c2FsdA==$aGFzaA==\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("iterations"), "{err}");
    }
}
