//! Cost figures, printed, never asserted (no timing thresholds in tests). Run with
//! `cargo test -p ringmq-auth --profile bench --test measure -- --ignored --nocapture`.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use argon2::password_hash::{PasswordHasher, SaltString};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ringmq_auth::{
    Acl, AuthPool, AuthReply, AuthRequest, Authenticator, Credentials, Identity, JwtConfig,
    JwtVerifier, PasswordFile,
};
use serde_json::json;

fn per_op(label: &str, iterations: u32, mut op: impl FnMut()) {
    let start = Instant::now();
    for _ in 0..iterations {
        op();
    }
    let elapsed = start.elapsed();
    println!(
        "{label}: {:.2} us/op ({iterations} ops)",
        elapsed.as_secs_f64() * 1e6 / f64::from(iterations)
    );
}

#[test]
#[ignore]
fn costs() {
    // Password hashes: mosquitto_passwd's $7$ default and argon2id with the crate defaults
    // (m=19456 KiB, t=2, p=1).
    let dir = tempfile::tempdir().unwrap();
    if let Some(path) = common::mosquitto_passwd(dir.path(), "sha512-pbkdf2", &[("u", "pw")]) {
        let file = PasswordFile::load(&path).unwrap();
        per_op("verify $7$ (101 iterations, wrong password)", 2000, || {
            std::hint::black_box(file.verify("u", b"wrong"));
        });
    }
    let salt = SaltString::encode_b64(b"ringmq-test-salt").unwrap();
    let hash = argon2::Argon2::default()
        .hash_password(b"pw", &salt)
        .unwrap()
        .to_string();
    let file = PasswordFile::parse(&format!("u:{hash}\n")).unwrap();
    per_op("verify argon2id (m=19456,t=2,p=1)", 20, || {
        std::hint::black_box(file.verify("u", b"wrong"));
    });

    // JWT verification per algorithm.
    let now = UNIX_EPOCH + Duration::from_secs(1_893_456_000);
    let claims = json!({"sub": "u", "exp": 1_893_456_600u64});
    let secret = b"0123456789abcdef0123456789abcdef";
    common::write(dir.path(), "secret", secret);
    let hs = JwtVerifier::load(
        &toml::from_str::<JwtConfig>("secret_file = \"secret\"\n").unwrap(),
        dir.path(),
    )
    .unwrap();
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap();
    per_op("verify JWT HS256", 5000, || {
        std::hint::black_box(hs.verify(token.as_bytes(), "c", Some("u"), now).is_ok());
    });
    for (kind, alg) in [("rsa", Algorithm::RS256), ("ec", Algorithm::ES256)] {
        let Some((private, _)) = common::openssl_keypair(dir.path(), kind) else {
            continue;
        };
        let pem = std::fs::read(private).unwrap();
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
            _ => EncodingKey::from_ec_pem(&pem).unwrap(),
        };
        let verifier = JwtVerifier::load(
            &toml::from_str::<JwtConfig>(&format!("public_key_file = \"{kind}.pub.pem\"\n"))
                .unwrap(),
            dir.path(),
        )
        .unwrap();
        let token = jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap();
        per_op(&format!("verify JWT {alg:?}"), 500, || {
            std::hint::black_box(
                verifier
                    .verify(token.as_bytes(), "c", Some("u"), now)
                    .is_ok(),
            );
        });
    }

    // ACL checks on the hot path: 100 users with 3 rules each plus 3 patterns.
    let mut text = String::from("pattern readwrite vehicle/%c/#\npattern read fleet/%u/+\npattern deny vehicle/%c/firmware/#\n");
    for user in 0..100 {
        text.push_str(&format!(
            "user u{user}\ntopic read a/{user}/#\ntopic write b/{user}\ntopic deny a/{user}/x\n"
        ));
    }
    let acl = Acl::parse(&text).unwrap();
    let me = Identity::new("car-00017", Some("u17".into()));
    per_op(
        "acl check_publish vehicle/car-00017/speed",
        1_000_000,
        || {
            std::hint::black_box(acl.check_publish(&me, "vehicle/car-00017/speed"));
        },
    );
    per_op("acl check_receive a/17/y/z", 1_000_000, || {
        std::hint::black_box(acl.check_receive(&me, "a/17/y/z"));
    });
    per_op(
        "acl check_subscribe $share/g/vehicle/car-00017/+",
        1_000_000,
        || {
            std::hint::black_box(acl.check_subscribe(&me, "$share/g/vehicle/car-00017/+"));
        },
    );

    // Pool: a storm of 20k bad $7$ passwords through 2 workers (queue 1024); time to drain.
    let file = PasswordFile::parse(
        "u:$7$101$kxWuoSOEAdSZiOeP$iRYZtiTPrHYzjCGboNMa/X80R+7li4JIW8P24ceolThb4iMGKVQUkuda6UdNW/aPV+XNuL2eWO8llmLwJmDcXg==\n",
    )
    .unwrap();
    let pool = AuthPool::start(Authenticator::new(false, Some(file), None), 2, 1024, 1024).unwrap();
    let (reply_to, replies) = flume::unbounded::<AuthReply>();
    let start = Instant::now();
    let (mut queued, mut busy) = (0u64, 0u64);
    let mut submit_max = Duration::ZERO;
    for connection in 0..20_000u64 {
        let request = AuthRequest {
            connection,
            credentials: Credentials {
                client_id: format!("c{connection}"),
                username: Some("u".into()),
                password: Some(b"wrong".to_vec()),
                username_from_certificate: false,
            },
        };
        let before = Instant::now();
        let outcome = pool.try_submit(request, &reply_to);
        submit_max = submit_max.max(before.elapsed());
        match outcome {
            Ok(()) => queued += 1,
            Err(_) => busy += 1,
        }
    }
    for _ in 0..queued {
        replies.recv_timeout(Duration::from_secs(120)).unwrap();
    }
    println!(
        "pool storm: 20000 bad passwords, {queued} queued, {busy} busy, slowest try_submit {:?}, drained in {:?}",
        submit_max,
        start.elapsed()
    );
    let _ = SystemTime::now();
}
