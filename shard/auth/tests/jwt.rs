//! JWTs signed here (HS256 with a secret, RS256 / ES256 with `openssl genpkey` keys, a JWKS
//! file): valid tokens accepted; wrong, expired, not-yet-valid and forged tokens refused.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ringmq_auth::{
    Access, Acl, AuthConfig, Authenticator, Credentials, FailureReason, JwtConfig, JwtVerifier,
    Refusal,
};
use serde_json::{json, Value};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-ringmq";
/// A fixed "now" for every check: 2030-01-01.
const NOW_SECS: u64 = 1_893_456_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW_SECS)
}

fn config(extra: &str) -> JwtConfig {
    toml::from_str(extra).unwrap()
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value, kid: Option<&str>) -> Vec<u8> {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key)
        .unwrap()
        .into_bytes()
}

fn hs_verifier(dir: &Path, extra: &str) -> JwtVerifier {
    common::write(dir, "secret", &[SECRET, b"\n"].concat());
    let config = config(&format!("secret_file = \"secret\"\n{extra}"));
    config.validate().unwrap();
    JwtVerifier::load(&config, dir).unwrap()
}

fn valid_claims() -> Value {
    json!({"sub": "car-1", "client_id": "c1", "exp": NOW_SECS + 600})
}

#[test]
fn hs256_valid_wrong_expired_and_not_yet_valid() {
    let dir = tempfile::tempdir().unwrap();
    let verifier = hs_verifier(dir.path(), "leeway_secs = 30\n");
    let key = EncodingKey::from_secret(SECRET);
    let token = sign(Algorithm::HS256, &key, &valid_claims(), None);
    let grant = verifier.verify(&token, "c1", Some("car-1"), now()).unwrap();
    assert_eq!(
        grant.expires_at,
        Some(UNIX_EPOCH + Duration::from_secs(NOW_SECS + 600))
    );

    // Forged: signed with another secret.
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"not-the-secret-not-the-secret-!!"),
        &valid_claims(),
        None,
    );
    assert_eq!(
        verifier.verify(&forged, "c1", None, now()),
        Err(FailureReason::TokenSignature)
    );

    // Tampered payload: the signature no longer covers it.
    let text = String::from_utf8(token.clone()).unwrap();
    let mut parts: Vec<&str> = text.split('.').collect();
    use base64::Engine as _;
    let evil = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(br#"{"sub":"car-2","client_id":"c2","exp":9999999999}"#);
    parts[1] = &evil;
    assert_eq!(
        verifier.verify(parts.join(".").as_bytes(), "c2", None, now()),
        Err(FailureReason::TokenSignature)
    );

    // RFC 7519 4.1.4: expired, beyond the leeway.
    let expired = sign(Algorithm::HS256, &key, &json!({"exp": NOW_SECS - 31}), None);
    assert_eq!(
        verifier.verify(&expired, "c1", None, now()),
        Err(FailureReason::TokenExpired)
    );
    // Within the leeway it still passes.
    let just = sign(Algorithm::HS256, &key, &json!({"exp": NOW_SECS - 29}), None);
    assert!(verifier.verify(&just, "c1", None, now()).is_ok());
    // RFC 7519 4.1.5: not before.
    let early = sign(
        Algorithm::HS256,
        &key,
        &json!({"exp": NOW_SECS + 600, "nbf": NOW_SECS + 120}),
        None,
    );
    assert_eq!(
        verifier.verify(&early, "c1", None, now()),
        Err(FailureReason::TokenNotYetValid)
    );
    // require_exp (default): a token without exp is refused.
    let eternal = sign(Algorithm::HS256, &key, &json!({"sub": "x"}), None);
    assert_eq!(
        verifier.verify(&eternal, "c1", None, now()),
        Err(FailureReason::TokenExpired)
    );
    // Not a JWT at all.
    for junk in [&b"hunter2"[..], b"a.b.c", b"", &[0xff, 0xfe]] {
        assert_eq!(
            verifier.verify(junk, "c1", None, now()),
            Err(FailureReason::TokenMalformed)
        );
    }
}

#[test]
fn unsigned_and_confused_algorithms_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let verifier = hs_verifier(dir.path(), "");
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    // RFC 7518 3.6 "none": never accepted.
    let none = format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(format!(r#"{{"exp":{}}}"#, NOW_SECS + 60))
    );
    assert!(verifier.verify(none.as_bytes(), "c1", None, now()).is_err());

    // A PEM public key used as an HMAC secret (algorithm confusion) against an RS256 config.
    let Some((_, public)) = common::openssl_keypair(dir.path(), "rsa") else {
        return;
    };
    let rs = JwtVerifier::load(&config("public_key_file = \"rsa.pub.pem\"\n"), dir.path()).unwrap();
    let pem = std::fs::read(&public).unwrap();
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&pem),
        &valid_claims(),
        None,
    );
    assert_eq!(
        rs.verify(&confused, "c1", None, now()),
        Err(FailureReason::TokenSignature)
    );
}

#[test]
fn rs256_and_es256_with_openssl_keys() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, alg) in [("rsa", Algorithm::RS256), ("ec", Algorithm::ES256)] {
        let Some((private, _)) = common::openssl_keypair(dir.path(), kind) else {
            return;
        };
        let pem = std::fs::read(&private).unwrap();
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
            _ => EncodingKey::from_ec_pem(&pem).unwrap(),
        };
        let verifier = JwtVerifier::load(
            &config(&format!("public_key_file = \"{kind}.pub.pem\"\n")),
            dir.path(),
        )
        .unwrap();
        let token = sign(alg, &key, &valid_claims(), None);
        assert!(verifier.verify(&token, "c1", None, now()).is_ok(), "{kind}");

        // Signed by a different key pair of the same kind: forged.
        let other_dir = tempfile::tempdir().unwrap();
        let (other, _) = common::openssl_keypair(other_dir.path(), kind).unwrap();
        let other_pem = std::fs::read(other).unwrap();
        let other_key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&other_pem).unwrap(),
            _ => EncodingKey::from_ec_pem(&other_pem).unwrap(),
        };
        let forged = sign(alg, &other_key, &valid_claims(), None);
        assert_eq!(
            verifier.verify(&forged, "c1", None, now()),
            Err(FailureReason::TokenSignature),
            "{kind}"
        );
        // The right key but an HS256 token: the algorithm is not allowed for this key.
        let hs = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(SECRET),
            &valid_claims(),
            None,
        );
        assert_eq!(
            verifier.verify(&hs, "c1", None, now()),
            Err(FailureReason::TokenSignature)
        );
    }
}

#[test]
fn jwks_file_selects_by_kid() {
    let dir = tempfile::tempdir().unwrap();
    let Some((rsa_private, _)) = common::openssl_keypair(dir.path(), "rsa") else {
        return;
    };
    let (ec_private, _) = common::openssl_keypair(dir.path(), "ec").unwrap();
    let rsa = EncodingKey::from_rsa_pem(&std::fs::read(rsa_private).unwrap()).unwrap();
    let ec = EncodingKey::from_ec_pem(&std::fs::read(ec_private).unwrap()).unwrap();
    let mut rsa_jwk = Jwk::from_encoding_key(&rsa, Algorithm::RS256).unwrap();
    rsa_jwk.common.key_id = Some("rsa-1".into());
    let mut ec_jwk = Jwk::from_encoding_key(&ec, Algorithm::ES256).unwrap();
    ec_jwk.common.key_id = Some("ec-1".into());
    let set = JwkSet {
        keys: vec![rsa_jwk, ec_jwk],
    };
    common::write(dir.path(), "jwks.json", &serde_json::to_vec(&set).unwrap());
    let verifier = JwtVerifier::load(&config("jwks_file = \"jwks.json\"\n"), dir.path()).unwrap();

    let by_rsa = sign(Algorithm::RS256, &rsa, &valid_claims(), Some("rsa-1"));
    assert!(verifier.verify(&by_rsa, "c1", None, now()).is_ok());
    let by_ec = sign(Algorithm::ES256, &ec, &valid_claims(), Some("ec-1"));
    assert!(verifier.verify(&by_ec, "c1", None, now()).is_ok());
    let no_kid = sign(Algorithm::ES256, &ec, &valid_claims(), None);
    assert!(verifier.verify(&no_kid, "c1", None, now()).is_ok());
    let unknown_kid = sign(Algorithm::ES256, &ec, &valid_claims(), Some("ec-2"));
    assert_eq!(
        verifier.verify(&unknown_kid, "c1", None, now()),
        Err(FailureReason::TokenSignature)
    );
}

#[test]
fn claims_must_match_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let verifier = hs_verifier(
        dir.path(),
        "claims = { sub = \"%u\", client_id = \"%c\" }\nissuer = \"fleet\"\naudience = \"ringmq\"\n",
    );
    let key = EncodingKey::from_secret(SECRET);
    let mut claims = valid_claims();
    claims["iss"] = json!("fleet");
    claims["aud"] = json!("ringmq");
    let token = sign(Algorithm::HS256, &key, &claims, None);
    assert!(verifier.verify(&token, "c1", Some("car-1"), now()).is_ok());
    // Another car's token: refused for username and for client id.
    assert_eq!(
        verifier.verify(&token, "c1", Some("car-2"), now()),
        Err(FailureReason::TokenClaimMismatch)
    );
    assert_eq!(
        verifier.verify(&token, "c2", Some("car-1"), now()),
        Err(FailureReason::TokenClaimMismatch)
    );
    assert_eq!(
        verifier.verify(&token, "c1", None, now()),
        Err(FailureReason::TokenClaimMismatch)
    );
    let mut wrong_iss = claims.clone();
    wrong_iss["iss"] = json!("elsewhere");
    let token = sign(Algorithm::HS256, &key, &wrong_iss, None);
    assert_eq!(
        verifier.verify(&token, "c1", Some("car-1"), now()),
        Err(FailureReason::TokenClaimMismatch)
    );
    let mut no_aud = claims.clone();
    no_aud.as_object_mut().unwrap().remove("aud");
    let token = sign(Algorithm::HS256, &key, &no_aud, None);
    assert_eq!(
        verifier.verify(&token, "c1", Some("car-1"), now()),
        Err(FailureReason::TokenClaimMismatch)
    );
}

#[test]
fn acl_claim_grants_only_its_topics() {
    let dir = tempfile::tempdir().unwrap();
    common::write(dir.path(), "secret", SECRET);
    let auth: AuthConfig = toml::from_str(
        "[jwt]\nsecret_file = \"secret\"\nacl_claim = \"acl\"\nclaims = { sub = \"%u\" }\n",
    )
    .unwrap();
    let auth: Authenticator = auth.load(dir.path(), false).unwrap();
    let key = EncodingKey::from_secret(SECRET);
    let claims = json!({
        "sub": "car-1", "exp": NOW_SECS + 60,
        "acl": {"pub": ["vehicle/%c/telemetry"], "sub": ["vehicle/%c/cmd/#"], "all": ["chat/%u"]}
    });
    let credentials = Credentials {
        client_id: "c1".into(),
        username: Some("car-1".into()),
        password: Some(sign(Algorithm::HS256, &key, &claims, None)),
        username_from_certificate: false,
    };
    let identity = auth.authenticate(&credentials, now()).unwrap();
    assert!(identity.claim_acl.is_some());
    assert_eq!(
        identity.expires_at,
        Some(UNIX_EPOCH + Duration::from_secs(NOW_SECS + 60))
    );
    // No ACL file: everything would be allowed, but the claim makes this identity default-deny.
    let acl = Acl::allow_all();
    assert_eq!(
        acl.check_publish(&identity, "vehicle/c1/telemetry"),
        Access::Allow
    );
    assert_eq!(
        acl.check_publish(&identity, "vehicle/c2/telemetry"),
        Access::Deny
    );
    assert_eq!(
        acl.check_subscribe(&identity, "vehicle/c1/telemetry"),
        Access::Deny
    );
    assert_eq!(
        acl.check_subscribe(&identity, "vehicle/c1/cmd/#"),
        Access::Allow
    );
    assert_eq!(
        acl.check_subscribe(&identity, "vehicle/+/cmd/#"),
        Access::Deny
    );
    assert_eq!(acl.check_subscribe(&identity, "#"), Access::Deny);
    assert_eq!(
        acl.check_receive(&identity, "vehicle/c2/cmd/x"),
        Access::Deny
    );
    assert_eq!(acl.check_publish(&identity, "chat/car-1"), Access::Allow);
    assert_eq!(acl.check_subscribe(&identity, "chat/car-1"), Access::Allow);

    // A malformed claim refuses the token rather than granting something unintended.
    let bad = json!({"sub": "car-1", "exp": NOW_SECS + 60, "acl": {"publish": ["#"]}});
    let mut credentials = credentials.clone();
    credentials.password = Some(sign(Algorithm::HS256, &key, &bad, None));
    assert_eq!(
        auth.authenticate(&credentials, now()),
        Err(Refusal::BadCredentials(FailureReason::TokenMalformed))
    );
    // Another car's token: 0x87 Not authorized.
    credentials.username = Some("car-2".into());
    credentials.password = Some(sign(Algorithm::HS256, &key, &claims, None));
    let refusal = auth.authenticate(&credentials, now()).unwrap_err();
    assert_eq!(refusal.v5_reason_code(), 0x87);
}

#[test]
fn short_secret_and_bad_key_files_fail_to_load() {
    let dir = tempfile::tempdir().unwrap();
    common::write(dir.path(), "short", b"tiny\n");
    assert!(JwtVerifier::load(&config("secret_file = \"short\"\n"), dir.path()).is_err());
    common::write(dir.path(), "junk.pem", b"-----BEGIN NOTHING-----\n");
    assert!(JwtVerifier::load(&config("public_key_file = \"junk.pem\"\n"), dir.path()).is_err());
    common::write(dir.path(), "jwks.json", b"{\"keys\": 5}");
    assert!(JwtVerifier::load(&config("jwks_file = \"jwks.json\"\n"), dir.path()).is_err());
    assert!(JwtVerifier::load(&config("secret_file = \"missing\"\n"), dir.path()).is_err());
}

#[test]
fn password_file_users_first_then_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let Some(passwd) = common::mosquitto_passwd(dir.path(), "sha512-pbkdf2", &[("ops", "pw")])
    else {
        return;
    };
    common::write(dir.path(), "secret", SECRET);
    let config: AuthConfig = toml::from_str(&format!(
        "password_file = {:?}\n[jwt]\nsecret_file = \"secret\"\nclaims = {{ sub = \"%u\" }}\n",
        passwd.display().to_string()
    ))
    .unwrap();
    let auth = config.load(dir.path(), false).unwrap();
    let key = EncodingKey::from_secret(SECRET);
    let attempt = |username: &str, password: Vec<u8>| {
        auth.authenticate(
            &Credentials {
                client_id: "c1".into(),
                username: Some(username.into()),
                password: Some(password),
                username_from_certificate: false,
            },
            now(),
        )
    };
    assert!(attempt("ops", b"pw".to_vec()).is_ok());
    // A user in the password file cannot switch to a token, even a valid one.
    let ops_token = sign(
        Algorithm::HS256,
        &key,
        &json!({"sub": "ops", "exp": NOW_SECS + 60}),
        None,
    );
    assert_eq!(
        attempt("ops", ops_token),
        Err(Refusal::BadCredentials(FailureReason::WrongPassword))
    );
    let car_token = sign(
        Algorithm::HS256,
        &key,
        &json!({"sub": "car-1", "exp": NOW_SECS + 60}),
        None,
    );
    assert!(attempt("car-1", car_token).is_ok());
    assert_eq!(
        attempt("car-1", b"pw".to_vec()),
        Err(Refusal::BadCredentials(FailureReason::TokenMalformed))
    );
}

/// `close_on_expiry = false` leaves the connection open past `exp`, but the grant still says
/// how long the token is valid, so the pool's cache does not accept it afterwards (found by
/// tests/tests/auth_jwt.rs: an expired token reconnected from the cache).
#[test]
fn validity_is_kept_when_the_connection_is_not_closed_at_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let exp = Some(UNIX_EPOCH + Duration::from_secs(NOW_SECS + 600));
    let key = EncodingKey::from_secret(SECRET);
    let token = sign(Algorithm::HS256, &key, &valid_claims(), None);
    let verifier = hs_verifier(dir.path(), "close_on_expiry = false\n");
    let grant = verifier.verify(&token, "c1", Some("car-1"), now()).unwrap();
    assert_eq!((grant.expires_at, grant.valid_until), (None, exp));
    let closing = hs_verifier(dir.path(), "");
    let grant = closing.verify(&token, "c1", Some("car-1"), now()).unwrap();
    assert_eq!((grant.expires_at, grant.valid_until), (exp, exp));
}
