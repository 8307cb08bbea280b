//! Password files made by the real `mosquitto_passwd`, argon2id PHC strings, and the CONNECT
//! decisions built on them.

mod common;

use std::time::SystemTime;

use argon2::password_hash::{PasswordHasher, SaltString};
use ringmq_auth::{
    AuthConfig, Authenticator, Credentials, FailureReason, PasswordCheck, PasswordFile, Refusal,
};

fn credentials(client_id: &str, username: Option<&str>, password: Option<&[u8]>) -> Credentials {
    Credentials {
        client_id: client_id.to_owned(),
        username: username.map(str::to_owned),
        password: password.map(<[u8]>::to_vec),
        username_from_certificate: false,
    }
}

#[test]
fn pbkdf2_sha512_file_from_mosquitto_passwd() {
    let dir = tempfile::tempdir().unwrap();
    let Some(path) = common::mosquitto_passwd(
        dir.path(),
        "sha512-pbkdf2",
        &[("alice", "wonderland"), ("bob", "builder")],
    ) else {
        return;
    };
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("alice:$7$"), "{text}");
    let file = PasswordFile::load(&path).unwrap();
    assert_eq!(file.len(), 2);
    assert_eq!(file.verify("alice", b"wonderland"), PasswordCheck::Valid);
    assert_eq!(file.verify("bob", b"builder"), PasswordCheck::Valid);
    assert_eq!(
        file.verify("alice", b"builder"),
        PasswordCheck::WrongPassword
    );
    assert_eq!(
        file.verify("alice", b"wonderlan"),
        PasswordCheck::WrongPassword
    );
    assert_eq!(file.verify("alice", b""), PasswordCheck::WrongPassword);
    assert_eq!(
        file.verify("carol", b"wonderland"),
        PasswordCheck::UnknownUser
    );
}

#[test]
fn sha512_file_from_mosquitto_passwd() {
    let dir = tempfile::tempdir().unwrap();
    let Some(path) = common::mosquitto_passwd(dir.path(), "sha512", &[("dave", "s3cr3t")]) else {
        return;
    };
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("dave:$6$"), "{text}");
    let file = PasswordFile::load(&path).unwrap();
    assert_eq!(file.verify("dave", b"s3cr3t"), PasswordCheck::Valid);
    assert_eq!(file.verify("dave", b"S3cr3t"), PasswordCheck::WrongPassword);
}

#[test]
fn argon2id_phc_entries() {
    let salt = SaltString::encode_b64(b"ringmq-test-salt").unwrap();
    let params = argon2::Params::new(8 * 1024, 2, 1, None).unwrap();
    let hasher = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let hash = hasher
        .hash_password(b"correct horse", &salt)
        .unwrap()
        .to_string();
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    let file = PasswordFile::parse(&format!("erin:{hash}\n")).unwrap();
    assert_eq!(file.verify("erin", b"correct horse"), PasswordCheck::Valid);
    assert_eq!(
        file.verify("erin", b"battery staple"),
        PasswordCheck::WrongPassword
    );

    // argon2i / argon2d are not what Mosquitto writes: refused at load.
    let argon2i = argon2::Argon2::new(
        argon2::Algorithm::Argon2i,
        argon2::Version::V0x13,
        argon2::Params::new(8 * 1024, 2, 1, None).unwrap(),
    )
    .hash_password(b"x", &salt)
    .unwrap()
    .to_string();
    assert!(PasswordFile::parse(&format!("erin:{argon2i}\n")).is_err());
    // A memory cost above the bound is refused at load instead of costing 4 GiB per login.
    let huge = hash.replace("m=8192", "m=4194304");
    let err = PasswordFile::parse(&format!("# c\nerin:{huge}\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn bad_lines_name_the_line_and_hide_the_secret() {
    let err = PasswordFile::parse("ok:$6$c2FsdA==$AAAA\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 1"), "{err}");
    let err = PasswordFile::parse("\n\nmallory:hunter2\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 3") && !err.contains("hunter2"), "{err}");
}

#[test]
fn connect_decisions_and_connack_codes() {
    let dir = tempfile::tempdir().unwrap();
    let Some(path) = common::mosquitto_passwd(dir.path(), "sha512-pbkdf2", &[("alice", "pw")])
    else {
        return;
    };
    let config: AuthConfig = toml::from_str(&format!(
        "password_file = {:?}\n",
        path.display().to_string()
    ))
    .unwrap();
    let auth = config.load(dir.path(), false).unwrap();
    assert!(
        !auth.allow_anonymous(),
        "an auth source turns anonymous off by default"
    );
    let now = SystemTime::now();

    let identity = auth
        .authenticate(&credentials("c1", Some("alice"), Some(b"pw")), now)
        .unwrap();
    assert_eq!(identity.username.as_deref(), Some("alice"));
    assert_eq!(identity.client_id, "c1");

    let wrong = auth
        .authenticate(&credentials("c1", Some("alice"), Some(b"nope")), now)
        .unwrap_err();
    assert_eq!(wrong, Refusal::BadCredentials(FailureReason::WrongPassword));
    // MQTT 5.0 3.2.2.2 0x86, 3.1.1 3.2.2.3 return code 4.
    assert_eq!(
        (wrong.v5_reason_code(), wrong.v311_return_code()),
        (0x86, 4)
    );

    let unknown = auth
        .authenticate(&credentials("c1", Some("zed"), Some(b"pw")), now)
        .unwrap_err();
    assert_eq!(unknown, Refusal::BadCredentials(FailureReason::UnknownUser));

    let missing = auth
        .authenticate(&credentials("c1", Some("alice"), None), now)
        .unwrap_err();
    assert_eq!(
        missing,
        Refusal::BadCredentials(FailureReason::MissingPassword)
    );

    let anonymous = auth
        .authenticate(&credentials("c1", None, None), now)
        .unwrap_err();
    assert_eq!(
        anonymous,
        Refusal::NotAuthorized(FailureReason::AnonymousRefused)
    );
    // 0x87 Not authorized, 3.1.1 return code 5.
    assert_eq!(
        (anonymous.v5_reason_code(), anonymous.v311_return_code()),
        (0x87, 5)
    );
    assert_eq!(
        (
            Refusal::Banned.v5_reason_code(),
            Refusal::Banned.v311_return_code()
        ),
        (0x8A, 5)
    );

    // A username from a verified client certificate needs no password.
    let mut from_cert = credentials("car-7", Some("car-7"), None);
    from_cert.username_from_certificate = true;
    assert!(!auth.is_expensive(&from_cert));
    assert_eq!(
        auth.authenticate(&from_cert, now)
            .unwrap()
            .username
            .as_deref(),
        Some("car-7")
    );
}

#[test]
fn no_source_keeps_anonymous_on() {
    let auth = AuthConfig::default()
        .load(std::path::Path::new("."), false)
        .unwrap();
    let now = SystemTime::now();
    assert!(auth
        .authenticate(&credentials("c", None, None), now)
        .is_ok());
    let explicit_off = Authenticator::new(false, None, None);
    assert!(explicit_off
        .authenticate(&credentials("c", None, None), now)
        .is_err());
}

#[test]
fn reload_is_a_new_value() {
    let dir = tempfile::tempdir().unwrap();
    let Some(path) = common::mosquitto_passwd(dir.path(), "sha512-pbkdf2", &[("alice", "one")])
    else {
        return;
    };
    let first = PasswordFile::load(&path).unwrap();
    common::mosquitto_passwd(dir.path(), "sha512-pbkdf2", &[("alice", "two")]).unwrap();
    let second = PasswordFile::load(&path).unwrap();
    assert_eq!(first.verify("alice", b"one"), PasswordCheck::Valid);
    assert_eq!(second.verify("alice", b"one"), PasswordCheck::WrongPassword);
    assert_eq!(second.verify("alice", b"two"), PasswordCheck::Valid);
}
