//! The worker pool: bounded queue, replies on the caller's channel, the success cache, reload.

use std::time::Duration;

use ringmq_auth::{
    AuthPool, AuthReply, AuthRequest, Authenticator, Credentials, FailureReason, PasswordFile,
    Refusal,
};

/// Generous bound for a reply: only reached if the pool is broken.
const REPLY_WAIT: Duration = Duration::from_secs(120);

/// A `$7$` entry (PBKDF2-SHA512) computed here, `iterations` chosen to make each check slow.
fn pbkdf2_line(user: &str, password: &str, iterations: u32) -> String {
    use base64::Engine as _;
    let salt = b"0123456789ab";
    let mut hash = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password.as_bytes(), salt, iterations, &mut hash);
    let b64 = base64::engine::general_purpose::STANDARD;
    format!(
        "{user}:$7${iterations}${}${}\n",
        b64.encode(salt),
        b64.encode(hash)
    )
}

fn authenticator(iterations: u32, password: &str) -> Authenticator {
    let file = PasswordFile::parse(&pbkdf2_line("alice", password, iterations)).unwrap();
    Authenticator::new(false, Some(file), None)
}

fn request(connection: u64, password: &str) -> AuthRequest {
    AuthRequest {
        connection,
        credentials: Credentials {
            client_id: format!("c{connection}"),
            username: Some("alice".into()),
            password: Some(password.as_bytes().to_vec()),
            username_from_certificate: false,
        },
    }
}

#[test]
fn bad_password_storm_gets_queue_full_instead_of_blocking() {
    // One slow worker, a queue of 4: a storm of 200 bad passwords fills it at once.
    let pool = AuthPool::start(authenticator(200_000, "right"), 1, 4, 16).unwrap();
    let (reply_to, replies) = flume::unbounded::<AuthReply>();
    let mut queued = 0u64;
    let mut refused = 0u64;
    for connection in 0..200 {
        match pool.try_submit(request(connection, "wrong"), &reply_to) {
            Ok(()) => queued += 1,
            Err(back) => {
                // The request comes back whole so the caller can answer "server busy".
                assert_eq!(back.connection, connection);
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "queue never filled");
    assert!(
        queued <= 4 + 1 + 1,
        "queued {queued} with a queue of 4 and one worker"
    );
    for _ in 0..queued {
        let reply = replies.recv_timeout(REPLY_WAIT).unwrap();
        assert_eq!(
            reply.result.unwrap_err(),
            Refusal::BadCredentials(FailureReason::WrongPassword)
        );
    }
    let stats = pool.stats();
    assert_eq!(stats.queue_full, refused);
    assert_eq!(stats.submitted, queued);
    let wrong = stats
        .failures
        .iter()
        .find(|(reason, _)| *reason == FailureReason::WrongPassword)
        .map(|(_, count)| *count);
    assert_eq!(wrong, Some(queued));
    assert_eq!(stats.cache_hits, 0, "failures are never cached");
    // A busy CONNACK: MQTT 5.0 0x89, 3.1.1 rc 3.
    assert_eq!(Refusal::ServerBusy.v5_reason_code(), 0x89);
    assert_eq!(Refusal::ServerBusy.v311_return_code(), 3);
}

#[test]
fn successes_are_cached_and_reload_clears_the_cache() {
    let pool = AuthPool::start(authenticator(1_000, "right"), 2, 16, 16).unwrap();
    let (reply_to, replies) = flume::unbounded::<AuthReply>();
    pool.try_submit(request(1, "right"), &reply_to).unwrap();
    let first = replies.recv_timeout(REPLY_WAIT).unwrap();
    assert_eq!(first.connection, 1);
    assert_eq!(first.result.unwrap().username.as_deref(), Some("alice"));
    pool.try_submit(request(1, "right"), &reply_to).unwrap();
    assert!(replies.recv_timeout(REPLY_WAIT).unwrap().result.is_ok());
    assert_eq!(pool.stats().cache_hits, 1);

    // Same user and client, other password: not a cache hit, and refused.
    pool.try_submit(request(1, "wrong"), &reply_to).unwrap();
    assert!(replies.recv_timeout(REPLY_WAIT).unwrap().result.is_err());
    assert_eq!(pool.stats().cache_hits, 1);

    // The password changes on reload: the cached success must not survive it.
    pool.replace_authenticator(authenticator(1_000, "new"));
    pool.try_submit(request(1, "right"), &reply_to).unwrap();
    assert_eq!(
        replies
            .recv_timeout(REPLY_WAIT)
            .unwrap()
            .result
            .unwrap_err(),
        Refusal::BadCredentials(FailureReason::WrongPassword)
    );
    pool.try_submit(request(1, "new"), &reply_to).unwrap();
    assert!(replies.recv_timeout(REPLY_WAIT).unwrap().result.is_ok());
    assert_eq!(pool.stats().cache_hits, 1);
}

#[test]
fn cache_is_bounded() {
    let pool = AuthPool::start(authenticator(1, "right"), 1, 64, 2).unwrap();
    let (reply_to, replies) = flume::unbounded::<AuthReply>();
    for connection in 0..3 {
        pool.try_submit(request(connection, "right"), &reply_to)
            .unwrap();
        assert!(replies.recv_timeout(REPLY_WAIT).unwrap().result.is_ok());
    }
    // Client 0 was evicted (FIFO at 2 entries); client 2 is still cached.
    pool.try_submit(request(0, "right"), &reply_to).unwrap();
    pool.try_submit(request(2, "right"), &reply_to).unwrap();
    for _ in 0..2 {
        assert!(replies.recv_timeout(REPLY_WAIT).unwrap().result.is_ok());
    }
    assert_eq!(pool.stats().cache_hits, 1);
}

#[test]
fn bad_sizes_are_refused() {
    assert!(AuthPool::start(Authenticator::default(), 0, 4, 4).is_err());
    assert!(AuthPool::start(Authenticator::default(), 1, 0, 4).is_err());
    assert!(AuthPool::start(Authenticator::default(), 1, 4, usize::MAX).is_err());
}
