//! JWTs in the MQTT password field, through Debian's mosquitto_pub/mosquitto_sub and Eclipse Paho
//! (tests/python/auth_checks.py). The test signs every token itself (jsonwebtoken): HS256 with a
//! secret file, RS256 and ES256 with keys openssl generates, and a JWKS file built from those
//! keys. Valid tokens connect; expired, not-yet-valid, forged, wrongly signed, `alg: none`,
//! algorithm-confused and claim-mismatched ones get the CONNACK code of their kind per protocol
//! version; the ACL claim is honoured; a connection ends when its token expires. Skipped loudly
//! when mosquitto-clients, openssl or paho-mqtt is missing.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ringmq_tests::BrokerProcess;
use ringmq_tests::{free_port, metric_total, mosquitto, paho, unique, wait_for_metric};
use serde_json::{json, Value};

const TOOL_WAIT: Duration = Duration::from_secs(20);

/// v5 CONNACK 0x86 Bad User Name or Password / 3.1.1 return code 4 [MQTT-3.2.2-6].
const BAD_CREDENTIALS: (u8, u8) = (0x86, 4);
/// v5 CONNACK 0x87 Not authorized / 3.1.1 return code 5.
const NOT_AUTHORIZED: (u8, u8) = (0x87, 5);
const ACCEPTED: (u8, u8) = (0, 0);

/// One token presented: what it is, the token, the expected (v5, 3.1.1) CONNACK codes.
type Case = (&'static str, String, (u8, u8));

/// Keys and files the tests sign with, in a temp dir removed on drop.
struct Keys {
    dir: PathBuf,
    /// The HS256 secret as written to `hs.secret` (less its newline).
    secret: Vec<u8>,
}

fn tools_available() -> bool {
    let openssl = Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !openssl {
        eprintln!("\n!!!!! SKIPPED: openssl not found (apt-get install -y openssl) !!!!!\n");
    }
    openssl && mosquitto::available() && paho::available()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

impl Keys {
    fn new() -> Keys {
        let dir = std::env::temp_dir().join(unique("ringmq-jwt"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut keys = Keys {
            dir,
            secret: Vec::new(),
        };
        let hex = keys.openssl(&["rand", "-hex", "32"]);
        std::fs::write(keys.path("hs.secret"), &hex).expect("write secret");
        keys.secret = String::from_utf8(hex)
            .expect("hex")
            .trim()
            .as_bytes()
            .to_vec();
        for name in ["rsa1", "rsa2", "rogue"] {
            keys.openssl(&[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                &format!("{name}.key"),
            ]);
            keys.openssl(&[
                "pkey",
                "-in",
                &format!("{name}.key"),
                "-pubout",
                "-out",
                &format!("{name}.pub"),
            ]);
        }
        keys.openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "ec.key",
        ]);
        keys.openssl(&["pkey", "-in", "ec.key", "-pubout", "-out", "ec.pub"]);
        let jwks = json!({ "keys": [
            keys.rsa_jwk("rsa1", "fleet-1"),
            keys.rsa_jwk("rsa2", "fleet-2"),
            keys.ec_jwk("ec", "fleet-ec"),
        ]});
        std::fs::write(keys.path("jwks.json"), jwks.to_string()).expect("write jwks");
        keys
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn path_str(&self, name: &str) -> String {
        self.path(name).to_str().expect("utf-8 path").to_owned()
    }

    /// Runs openssl in the key dir and returns its stdout.
    fn openssl(&self, args: &[&str]) -> Vec<u8> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// The public half of `name.key` as an RSA JWK (RFC 7518 6.3.1).
    fn rsa_jwk(&self, name: &str, kid: &str) -> Value {
        let out = self.openssl(&[
            "rsa",
            "-pubin",
            "-in",
            &format!("{name}.pub"),
            "-noout",
            "-modulus",
        ]);
        let text = String::from_utf8(out).expect("utf-8");
        let hex = text.trim().strip_prefix("Modulus=").expect("Modulus= line");
        json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
               "n": URL_SAFE_NO_PAD.encode(from_hex(hex)), "e": "AQAB"})
    }

    /// The public half of `name.key` as a P-256 JWK (RFC 7518 6.2.1): the SubjectPublicKeyInfo
    /// DER ends with the uncompressed point 04 || x || y.
    fn ec_jwk(&self, name: &str, kid: &str) -> Value {
        let der = self.openssl(&[
            "pkey",
            "-pubin",
            "-in",
            &format!("{name}.pub"),
            "-outform",
            "DER",
        ]);
        assert!(
            der.len() > 65 && der[der.len() - 65] == 4,
            "uncompressed P-256 point"
        );
        let point = &der[der.len() - 64..];
        json!({"kty": "EC", "kid": kid, "alg": "ES256", "use": "sig", "crv": "P-256",
               "x": URL_SAFE_NO_PAD.encode(&point[..32]), "y": URL_SAFE_NO_PAD.encode(&point[32..])})
    }

    fn hs256(&self) -> EncodingKey {
        EncodingKey::from_secret(&self.secret)
    }

    fn rsa(&self, name: &str) -> EncodingKey {
        let pem = std::fs::read(self.path(&format!("{name}.key"))).expect("read rsa key");
        EncodingKey::from_rsa_pem(&pem).expect("rsa pem")
    }

    fn ec(&self) -> EncodingKey {
        let pem = std::fs::read(self.path("ec.key")).expect("read ec key");
        EncodingKey::from_ec_pem(&pem).expect("ec pem")
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn from_hex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn sign(algorithm: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("sign token")
}

/// An unsigned token (`alg: none`, empty signature): RFC 7519 6.1.
fn unsigned(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

/// `token` with its payload replaced by `claims` and its signature kept.
fn forge(token: &str, claims: &Value) -> String {
    let mut parts = token.split('.');
    let header = parts.next().expect("header");
    let _payload = parts.next().expect("payload");
    let signature = parts.next().expect("signature");
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.{signature}")
}

/// Claims for a client: `sub` = username, `client_id`, expiry `exp_in` seconds from now.
fn claims(username: &str, client_id: &str, exp_in: i64) -> Value {
    let exp = (now_secs() as i64 + exp_in).max(0);
    json!({"sub": username, "client_id": client_id, "exp": exp})
}

/// A broker verifying tokens with `key_line` (one `[auth.jwt]` key source line); claims `sub` and
/// `client_id` must equal the username and client id, the ACL claim is `acl`, no leeway, and
/// connections close when their token expires. Flapping detection is off: these tests connect
/// one client id far more than 15 times a minute on purpose (with it on, CONNACK 0x8A Banned).
fn jwt_broker(key_line: &str, metrics_port: u16) -> BrokerProcess {
    jwt_broker_closing(key_line, metrics_port, true)
}

fn jwt_broker_closing(key_line: &str, metrics_port: u16, close_on_expiry: bool) -> BrokerProcess {
    let config = format!(
        "[auth.jwt]\n{key_line}\nleeway_secs = 0\nclaims = {{ sub = \"%u\", client_id = \"%c\" }}\n\
         acl_claim = \"acl\"\nclose_on_expiry = {close_on_expiry}\n\
         [overload.flapping]\nmax_connects = 0\n"
    );
    let metrics = format!("127.0.0.1:{metrics_port}");
    BrokerProcess::start_with_config(&config, &["--metrics-listen", &metrics])
}

/// mosquitto_pub -d with the token as password; the CONNACK code libmosquitto logged
/// (`received CONNACK (N)`), None when none arrived.
fn mosquitto_connack(
    port: u16,
    version: &str,
    client_id: &str,
    user: &str,
    token: &str,
) -> Option<u8> {
    let port = port.to_string();
    let (_, lines) = mosquitto::spawn(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            version,
            "-i",
            client_id,
            "-u",
            user,
            "-P",
            token,
            "-t",
            "fleet/any",
            "-m",
            "x",
            "-d",
        ],
    )
    .finish(TOOL_WAIT);
    connack_in(&lines)
}

fn connack_in(lines: &[String]) -> Option<u8> {
    lines.iter().find_map(|l| {
        let rest = l.split("received CONNACK (").nth(1)?;
        rest.split(')').next()?.trim().parse().ok()
    })
}

/// Paho's view of one CONNECT: the CONNACK code (3.1.1 return code or v5 reason code).
fn paho_connack(port: u16, version: &str, client_id: &str, user: &str, token: &str) -> Option<u8> {
    let (_, lines) = paho::auth_check(
        port,
        &["connack", version, client_id, user, token],
        TOOL_WAIT,
    );
    paho::connack(&lines)
}

/// HS256 with a secret file, through mosquitto_pub for 3.1.1 and 5.0: a valid token connects;
/// every bad one is refused with CONNACK 0x86 / return code 4, except a genuine token issued to
/// another client id or username, which is 0x87 / 5 [MQTT-3.2.2-6: refused CONNACK, then close].
#[test]
fn hs256_tokens_through_mosquitto_clients() {
    if !tools_available() {
        return;
    }
    let keys = Keys::new();
    let metrics_port = free_port();
    let broker = jwt_broker(
        &format!("secret_file = {:?}", keys.path_str("hs.secret")),
        metrics_port,
    );
    let hs = keys.hs256();
    let valid = sign(Algorithm::HS256, &hs, None, &claims("car1", "car1", 600));
    let other_secret = EncodingKey::from_secret(b"a-different-secret-of-at-least-32-bytes!");
    let now = now_secs();
    let cases: Vec<(&str, &str, String, (u8, u8))> = vec![
        ("valid", "car1", valid.clone(), ACCEPTED),
        (
            "expired",
            "car1",
            sign(Algorithm::HS256, &hs, None, &claims("car1", "car1", -120)),
            BAD_CREDENTIALS,
        ),
        (
            "not yet valid (nbf)",
            "car1",
            sign(
                Algorithm::HS256,
                &hs,
                None,
                &json!({"sub": "car1", "client_id": "car1", "exp": now + 7200, "nbf": now + 3600}),
            ),
            BAD_CREDENTIALS,
        ),
        (
            "no exp (require_exp)",
            "car1",
            sign(
                Algorithm::HS256,
                &hs,
                None,
                &json!({"sub": "car1", "client_id": "car1"}),
            ),
            BAD_CREDENTIALS,
        ),
        (
            "signed with another secret",
            "car1",
            sign(
                Algorithm::HS256,
                &other_secret,
                None,
                &claims("car1", "car1", 600),
            ),
            BAD_CREDENTIALS,
        ),
        (
            "forged payload, original signature",
            "car2",
            forge(&valid, &claims("car2", "car2", 600)),
            BAD_CREDENTIALS,
        ),
        (
            "alg none",
            "car1",
            unsigned(&claims("car1", "car1", 600)),
            BAD_CREDENTIALS,
        ),
        ("not a token", "car1", "secret1".to_owned(), BAD_CREDENTIALS),
        (
            "token of another client id",
            "car1",
            sign(Algorithm::HS256, &hs, None, &claims("car1", "car2", 600)),
            NOT_AUTHORIZED,
        ),
    ];
    for (version, v5) in [("mqttv311", false), ("mqttv5", true)] {
        for (name, client_id, token, (code_v5, code_v311)) in &cases {
            let want = if v5 { *code_v5 } else { *code_v311 };
            let got = mosquitto_connack(broker.port, version, client_id, "car1", token);
            assert_eq!(got, Some(want), "{version} {name}: CONNACK");
        }
        // A genuine token for car1 presented with username car2 (claim sub = %u).
        let got = mosquitto_connack(broker.port, version, "car1", "car2", &valid);
        let want = if v5 {
            NOT_AUTHORIZED.0
        } else {
            NOT_AUTHORIZED.1
        };
        assert_eq!(got, Some(want), "{version} username mismatch: CONNACK");
    }
    // Nine refusals per version; the pool exports its counters once a second.
    let text = wait_for_metric(metrics_port, "ringmq_auth_failures_total", &[], 18.0);
    for reason in [
        "token_expired",
        "token_not_yet_valid",
        "token_signature",
        "token_malformed",
        "token_claim_mismatch",
    ] {
        let label = format!("reason=\"{reason}\"");
        assert!(
            metric_total(&text, "ringmq_auth_failures_total", &[&label]) >= 2.0,
            "ringmq_auth_failures_total{{{label}}} not counted:\n{text}"
        );
    }
}

/// RS256 and ES256 public keys in PEM and a JWKS file, through Paho on 3.1.1 and 5.0. Also the
/// classic confusions: an HS256 token whose "secret" is the broker's RSA public key, an ES256
/// token for an RS256 key, a key the broker does not know, and a JWKS `kid` naming another key.
#[test]
fn rs256_es256_and_jwks_tokens_through_paho() {
    if !tools_available() {
        return;
    }
    let keys = Keys::new();
    let car = |exp_in| claims("car1", "car1", exp_in);
    let rsa_pub_as_secret = std::fs::read(keys.path("rsa1.pub")).expect("read rsa pub");
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&rsa_pub_as_secret),
        None,
        &car(600),
    );
    let brokers: Vec<(&str, String, Vec<Case>)> = vec![
        (
            "rs256 pem",
            format!("public_key_file = {:?}", keys.path_str("rsa1.pub")),
            vec![
                (
                    "valid",
                    sign(Algorithm::RS256, &keys.rsa("rsa1"), None, &car(600)),
                    ACCEPTED,
                ),
                (
                    "hs256 with the public key as secret",
                    confused.clone(),
                    BAD_CREDENTIALS,
                ),
                (
                    "es256 token",
                    sign(Algorithm::ES256, &keys.ec(), None, &car(600)),
                    BAD_CREDENTIALS,
                ),
                (
                    "unknown key",
                    sign(Algorithm::RS256, &keys.rsa("rogue"), None, &car(600)),
                    BAD_CREDENTIALS,
                ),
                (
                    "expired",
                    sign(Algorithm::RS256, &keys.rsa("rsa1"), None, &car(-120)),
                    BAD_CREDENTIALS,
                ),
                ("alg none", unsigned(&car(600)), BAD_CREDENTIALS),
            ],
        ),
        (
            "es256 pem",
            format!("public_key_file = {:?}", keys.path_str("ec.pub")),
            vec![
                (
                    "valid",
                    sign(Algorithm::ES256, &keys.ec(), None, &car(600)),
                    ACCEPTED,
                ),
                (
                    "rs256 token",
                    sign(Algorithm::RS256, &keys.rsa("rsa1"), None, &car(600)),
                    BAD_CREDENTIALS,
                ),
                (
                    "token of another client id",
                    sign(
                        Algorithm::ES256,
                        &keys.ec(),
                        None,
                        &claims("car1", "car9", 600),
                    ),
                    NOT_AUTHORIZED,
                ),
            ],
        ),
        (
            "jwks",
            format!("jwks_file = {:?}", keys.path_str("jwks.json")),
            vec![
                (
                    "rsa kid fleet-2",
                    sign(
                        Algorithm::RS256,
                        &keys.rsa("rsa2"),
                        Some("fleet-2"),
                        &car(600),
                    ),
                    ACCEPTED,
                ),
                (
                    "rsa without kid",
                    sign(Algorithm::RS256, &keys.rsa("rsa1"), None, &car(600)),
                    ACCEPTED,
                ),
                (
                    "ec kid fleet-ec",
                    sign(Algorithm::ES256, &keys.ec(), Some("fleet-ec"), &car(600)),
                    ACCEPTED,
                ),
                (
                    "rsa2 signature, kid fleet-1",
                    sign(
                        Algorithm::RS256,
                        &keys.rsa("rsa2"),
                        Some("fleet-1"),
                        &car(600),
                    ),
                    BAD_CREDENTIALS,
                ),
                (
                    "unknown key",
                    sign(Algorithm::RS256, &keys.rsa("rogue"), None, &car(600)),
                    BAD_CREDENTIALS,
                ),
                (
                    "hs256 with a public key as secret",
                    confused.clone(),
                    BAD_CREDENTIALS,
                ),
            ],
        ),
    ];
    for (source, key_line, cases) in &brokers {
        let broker = jwt_broker(key_line, free_port());
        for (version, v5) in [("311", false), ("5", true)] {
            for (name, token, (code_v5, code_v311)) in cases {
                let want = if v5 { *code_v5 } else { *code_v311 };
                let got = paho_connack(broker.port, version, "car1", "car1", token);
                assert_eq!(got, Some(want), "{source}, v{version}, {name}: CONNACK");
            }
        }
    }
}

/// The token's `acl` claim grants exactly what it lists (an identity with a claim is default
/// deny): SUBSCRIBE outside it is refused (v5 SUBACK 0x87, 3.1.1 0x80 [MQTT-3.9.3-2]), PUBLISH
/// outside it gets v5 PUBACK 0x87, and what it grants flows.
#[test]
fn acl_claim_is_honoured() {
    if !tools_available() {
        return;
    }
    let keys = Keys::new();
    let broker = jwt_broker(
        &format!("secret_file = {:?}", keys.path_str("hs.secret")),
        free_port(),
    );
    let port = broker.port.to_string();
    let token = |client_id: &str| {
        let mut c = claims("car1", client_id, 600);
        c["acl"] = json!({"sub": ["fleet/car1/#"], "pub": ["fleet/car1/up"]});
        sign(Algorithm::HS256, &keys.hs256(), None, &c)
    };
    for (version, refused) in [("mqttv5", "135"), ("mqttv311", "128")] {
        for (filter, granted) in [
            ("fleet/car1/#", true),
            ("fleet/car2/#", false),
            ("fleet/+/up", false),
            ("#", false),
        ] {
            let id = unique("car1-sub");
            let t = token(&id);
            let (_, lines) = mosquitto::spawn(
                "mosquitto_sub",
                &[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-V",
                    version,
                    "-i",
                    &id,
                    "-u",
                    "car1",
                    "-P",
                    &t,
                    "-t",
                    filter,
                    "-d",
                    "-E",
                    "-W",
                    "10",
                ],
            )
            .finish(TOOL_WAIT);
            let suback = lines.iter().find(|l| l.starts_with("Subscribed"));
            let want = if granted { ": 0" } else { refused };
            assert!(
                suback.is_some_and(|l| l.trim_end().ends_with(want)),
                "{version} {filter}: expected SUBACK ending {want:?}, got {lines:?}"
            );
        }
    }
    // Delivery under the grant, and PUBACK 0x87 outside it (v5).
    let sub_id = unique("car1-sub");
    let sub_token = token(&sub_id);
    let sub = mosquitto::spawn(
        "mosquitto_sub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            "mqttv5",
            "-i",
            &sub_id,
            "-u",
            "car1",
            "-P",
            &sub_token,
            "-t",
            "fleet/car1/#",
            "-q",
            "1",
            "-v",
            "-C",
            "1",
            "-W",
            "15",
        ],
    );
    let pub_token = token("car1");
    let publish = |topic: &str| {
        let (_, lines) = mosquitto::spawn(
            "mosquitto_pub",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                "mqttv5",
                "-i",
                "car1",
                "-u",
                "car1",
                "-P",
                &pub_token,
                "-t",
                topic,
                "-m",
                "up",
                "-q",
                "1",
                "-d",
            ],
        )
        .finish(TOOL_WAIT);
        lines
    };
    let lines = publish("fleet/car2/up");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("received PUBACK") && l.contains("RC:135")),
        "publish outside the claim: expected PUBACK 0x87, got {lines:?}"
    );
    let lines = publish("fleet/car1/other");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("received PUBACK") && l.contains("RC:135")),
        "publish outside the claim's pub list: expected PUBACK 0x87, got {lines:?}"
    );
    // The subscriber may need a moment to be subscribed: publish until it has its message.
    let mut got = None;
    for _ in 0..20 {
        let lines = publish("fleet/car1/up");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("received PUBACK") && l.contains("RC:0")),
            "publish inside the claim: expected PUBACK 0, got {lines:?}"
        );
        if let Some(line) = sub.line(Duration::from_millis(500)) {
            got = Some(line);
            break;
        }
    }
    assert_eq!(
        got.as_deref(),
        Some("fleet/car1/up up"),
        "delivery under the claim"
    );
}

/// `close_on_expiry`: the broker ends the connection when the token's `exp` passes; a v5
/// client gets DISCONNECT 0x87 Not authorized first [MQTT-3.14.2-1 the reason code], a 3.1.1
/// client is closed. Counted as `ringmq_auth_expired_total`.
#[test]
fn connection_closes_when_its_token_expires() {
    if !tools_available() {
        return;
    }
    let keys = Keys::new();
    let metrics_port = free_port();
    let broker = jwt_broker(
        &format!("secret_file = {:?}", keys.path_str("hs.secret")),
        metrics_port,
    );
    for version in ["5", "311"] {
        let id = unique("car-exp");
        let token = sign(
            Algorithm::HS256,
            &keys.hs256(),
            None,
            &claims("car1", &id, 3),
        );
        let (code, lines) = paho::auth_check(
            broker.port,
            &["expiry", version, &id, "car1", &token],
            TOOL_WAIT,
        );
        assert_eq!(code, Some(0), "v{version}: {lines:?}");
        assert_eq!(paho::connack(&lines), Some(0), "v{version}: {lines:?}");
        let disconnect = lines.iter().find(|l| l.starts_with("disconnect "));
        if version == "5" {
            assert_eq!(
                disconnect.map(String::as_str),
                Some("disconnect 135 from_server=True"),
                "v5: {lines:?}"
            );
        } else {
            assert!(disconnect.is_some(), "v3.1.1 not closed: {lines:?}");
        }
    }
    let text = wait_for_metric(metrics_port, "ringmq_auth_expired_total", &[], 2.0);
    assert_eq!(
        metric_total(&text, "ringmq_auth_expired_total", &[]),
        2.0,
        "ringmq_auth_expired_total:\n{text}"
    );
}

/// A token that verified once is cached (a reconnecting vehicle is not verified again), but not
/// past its `exp`: after it expires the same token is refused (0x86 / rc 4), also with
/// `close_on_expiry = false` (which only means a live connection is left open).
#[test]
fn an_expired_token_is_not_accepted_from_the_cache() {
    if !tools_available() {
        return;
    }
    let keys = Keys::new();
    let secret = format!("secret_file = {:?}", keys.path_str("hs.secret"));
    for close_on_expiry in [false, true] {
        let broker = jwt_broker_closing(&secret, free_port(), close_on_expiry);
        let exp = now_secs() + 2;
        let token = sign(
            Algorithm::HS256,
            &keys.hs256(),
            None,
            &json!({"sub": "car1", "client_id": "car1", "exp": exp}),
        );
        for version in ["5", "311"] {
            let got = paho_connack(broker.port, version, "car1", "car1", &token);
            assert_eq!(
                got,
                Some(0),
                "close_on_expiry={close_on_expiry} v{version} before exp"
            );
        }
        // Wait for the wall clock (not the broker) to pass exp; bounded.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while now_secs() <= exp {
            assert!(std::time::Instant::now() < deadline, "clock stuck");
            std::thread::sleep(Duration::from_millis(100));
        }
        for (version, want) in [("5", BAD_CREDENTIALS.0), ("311", BAD_CREDENTIALS.1)] {
            let got = paho_connack(broker.port, version, "car1", "car1", &token);
            assert_eq!(
                got,
                Some(want),
                "close_on_expiry={close_on_expiry} v{version}: an expired token was accepted"
            );
        }
    }
}
