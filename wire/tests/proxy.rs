//! PROXY protocol headers (`wire::proxy`): the examples of haproxy's `proxy-protocol.txt`,
//! truncated and malformed headers, and property tests. Section numbers are that document's.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;
use ringmq_wire::proxy::*;

const CONNECT: &[u8] = &[
    0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 0,
];

fn complete(bytes: &[u8], mode: ProxyMode) -> (usize, ProxyInfo) {
    match check(bytes, mode) {
        Ok(ProxyCheck::Complete { header_len, info }) => (header_len, info),
        other => panic!("{bytes:02x?}: {other:?}"),
    }
}

fn addr(s: &str) -> Option<SocketAddr> {
    Some(s.parse().unwrap())
}

/// A v2 header: signature, version/command byte, family/protocol byte, then `body`.
fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(ver_cmd);
    out.push(fam);
    out.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn ipv4_body() -> Vec<u8> {
    let mut body = vec![192, 168, 0, 1, 192, 168, 0, 11];
    body.extend_from_slice(&56324u16.to_be_bytes());
    body.extend_from_slice(&443u16.to_be_bytes());
    body
}

// --- v1 ----------------------------------------------------------------------------------------

#[test]
fn v1_spec_example_then_mqtt() {
    // 2.1: "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n" before the payload.
    let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
    let mut bytes = line.to_vec();
    bytes.extend_from_slice(CONNECT);
    for mode in [ProxyMode::V1, ProxyMode::Any] {
        let (header_len, info) = complete(&bytes, mode);
        assert_eq!(header_len, line.len());
        assert_eq!(&bytes[header_len..], CONNECT, "what follows is MQTT");
        assert_eq!(
            info,
            ProxyInfo {
                version: ProxyVersion::V1,
                command: ProxyCommand::Proxy,
                transport: ProxyTransport::Stream,
                source: addr("192.168.0.1:56324"),
                destination: addr("192.168.0.11:443"),
                tlv_offset: 0,
                tlv_len: 0,
            }
        );
    }
}

#[test]
fn v1_longest_lines() {
    // 2.1: the longest TCP4 (56), TCP6 (104) and UNKNOWN (107) lines.
    let tcp4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
    let (len, info) = complete(tcp4, ProxyMode::V1);
    assert_eq!(len, 56);
    assert_eq!(info.source, addr("255.255.255.255:65535"));

    let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let tcp6 = format!("PROXY TCP6 {full} {full} 65535 65535\r\n");
    let (len, info) = complete(tcp6.as_bytes(), ProxyMode::V1);
    assert_eq!(len, 104);
    assert_eq!(
        info.source,
        Some(SocketAddr::new(Ipv6Addr::from([0xffff; 8]).into(), 65535))
    );

    let unknown = format!("PROXY UNKNOWN {full} {full} 65535 65535\r\n");
    assert_eq!(unknown.len(), V1_HEADER_LEN_MAX);
    let (len, info) = complete(unknown.as_bytes(), ProxyMode::V1);
    assert_eq!(len, 107);
    // "the receiver must ignore anything presented before the CRLF".
    assert_eq!((info.command, info.source), (ProxyCommand::Local, None));
}

#[test]
fn v1_unknown_short_form() {
    // 2.1: "PROXY UNKNOWN\r\n": use the real connection's addresses.
    let (len, info) = complete(b"PROXY UNKNOWN\r\n", ProxyMode::Any);
    assert_eq!(len, 15);
    assert_eq!(info.command, ProxyCommand::Local);
    assert_eq!((info.source, info.destination), (None, None));
}

#[test]
fn v1_compressed_ipv6() {
    let (_, info) = complete(b"PROXY TCP6 2001:db8::1 ::1 40000 1883\r\n", ProxyMode::V1);
    assert_eq!(info.source, addr("[2001:db8::1]:40000"));
    assert_eq!(info.destination, addr("[::1]:1883"));
}

#[test]
fn v1_byte_by_byte() {
    // 2.1: "The receiver must wait for the CRLF sequence before starting to decode".
    let line = b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 1883\r\n";
    for end in 0..line.len() {
        match check(&line[..end], ProxyMode::V1) {
            Ok(ProxyCheck::Incomplete { needed_at_least }) => {
                assert!(
                    needed_at_least > end && needed_at_least <= line.len(),
                    "at {end}"
                )
            }
            other => panic!("at {end}: {other:?}"),
        }
    }
    assert_eq!(complete(line, ProxyMode::V1).0, line.len());
}

#[test]
fn v1_malformed() {
    let cases: &[&[u8]] = &[
        // A single CR or LF must not end the line (2.1).
        b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 1883\n",
        b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 1883\rX",
        // Leading zeros are not permitted in addresses or ports.
        b"PROXY TCP4 10.0.0.01 10.0.0.2 1000 1883\r\n",
        b"PROXY TCP4 10.0.0.1 10.0.0.2 01000 1883\r\n",
        b"PROXY TCP4 10.0.0.1 10.0.0.2 65536 1883\r\n",
        // The family dictates the address format.
        b"PROXY TCP4 ::1 ::1 1000 1883\r\n",
        b"PROXY TCP6 10.0.0.1 10.0.0.2 1000 1883\r\n",
        b"PROXY TCP5 10.0.0.1 10.0.0.2 1000 1883\r\n",
        // Exactly one space between fields.
        b"PROXY TCP4  10.0.0.1 10.0.0.2 1000 1883\r\n",
        b"PROXY TCP4 10.0.0.1 10.0.0.2 1000\r\n",
        b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 1883 7\r\n",
        b"PROXY \r\n",
    ];
    for bytes in cases {
        assert!(
            check(bytes, ProxyMode::V1).is_err(),
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn v1_without_crlf_in_107_bytes_is_too_long() {
    // 2.1: "If the CRLF sequence is not found in the first 107 characters, the receiver should
    // declare the line invalid."
    let mut bytes = b"PROXY UNKNOWN ".to_vec();
    bytes.resize(V1_HEADER_LEN_MAX, b'f');
    assert_eq!(
        check(&bytes, ProxyMode::V1),
        Err(ProxyError::HeaderTooLong {
            limit: V1_HEADER_LEN_MAX,
            len: V1_HEADER_LEN_MAX
        })
    );
    // The CR at position 106 would make a 108-byte line.
    bytes[V1_HEADER_LEN_MAX - 1] = b'\r';
    bytes.push(b'\n');
    assert!(check(&bytes, ProxyMode::V1).is_err());
}

#[test]
fn not_a_header_is_refused_at_once() {
    // 2.3: "otherwise the protocol is not covered by this specification and the connection
    // must be dropped"; 1: the receiver "MUST not try to guess whether the header is present".
    assert_eq!(
        check(CONNECT, ProxyMode::Any),
        Err(ProxyError::NotProxyProtocol {
            expected: "v1 or v2"
        })
    );
    assert_eq!(
        check(b"GET / HTTP/1.1\r\n", ProxyMode::V1),
        Err(ProxyError::NotProxyProtocol { expected: "v1" })
    );
    assert_eq!(
        check(b"PRONTO", ProxyMode::Any),
        Err(ProxyError::NotProxyProtocol { expected: "v1" })
    );
    assert_eq!(
        check(b"proxy TCP4", ProxyMode::V1),
        Err(ProxyError::NotProxyProtocol { expected: "v1" })
    );
    let v2_header = v2(0x21, 0x11, &ipv4_body());
    assert_eq!(
        check(&v2_header, ProxyMode::V1),
        Err(ProxyError::NotProxyProtocol { expected: "v1" })
    );
    assert_eq!(
        check(b"PROXY UNKNOWN\r\n", ProxyMode::V2),
        Err(ProxyError::NotProxyProtocol { expected: "v2" })
    );
    for mode in [ProxyMode::V1, ProxyMode::V2, ProxyMode::Any] {
        assert_eq!(
            check(b"", mode),
            Ok(ProxyCheck::Incomplete { needed_at_least: 1 })
        );
    }
}

// --- v2 ----------------------------------------------------------------------------------------

#[test]
fn v2_tcp_over_ipv4_then_mqtt() {
    // 2.2: \x21 PROXY, \x11 TCP over IPv4, 12 address bytes.
    let mut bytes = v2(0x21, 0x11, &ipv4_body());
    assert_eq!(bytes.len(), 28);
    bytes.extend_from_slice(CONNECT);
    for mode in [ProxyMode::V2, ProxyMode::Any] {
        let (header_len, info) = complete(&bytes, mode);
        assert_eq!(header_len, 28);
        assert_eq!(&bytes[header_len..], CONNECT);
        assert_eq!(info.version, ProxyVersion::V2);
        assert_eq!(info.command, ProxyCommand::Proxy);
        assert_eq!(info.transport, ProxyTransport::Stream);
        assert_eq!(info.source, addr("192.168.0.1:56324"));
        assert_eq!(info.destination, addr("192.168.0.11:443"));
        assert_eq!(info.tlv_len, 0);
    }
}

#[test]
fn v2_tcp_over_ipv6() {
    // 2.2: \x21 TCP over IPv6, 36 address bytes.
    let mut body = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7)
        .octets()
        .to_vec();
    body.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    body.extend_from_slice(&[0x9c, 0x40, 0x07, 0x5b]);
    let (len, info) = complete(&v2(0x21, 0x21, &body), ProxyMode::V2);
    assert_eq!(len, 16 + 36);
    assert_eq!(info.source, addr("[2001:db8::7]:40000"));
    assert_eq!(info.destination, addr("[::1]:1883"));
}

#[test]
fn v2_local_health_check() {
    // 2.2: LOCAL "must accept the connection as valid and must use the real connection
    // endpoints"; with UNSPEC and length 0 as HAProxy sends its checks.
    let (len, info) = complete(&v2(0x20, 0x00, &[]), ProxyMode::V2);
    assert_eq!(len, 16);
    assert_eq!(info.command, ProxyCommand::Local);
    assert_eq!((info.source, info.destination), (None, None));
    // "Receivers MUST always consider this field to skip the appropriate number of bytes and
    // must not assume zero is presented for LOCAL connections."
    let bytes = v2(0x20, 0x11, &ipv4_body());
    let (len, info) = complete(&bytes, ProxyMode::V2);
    assert_eq!(len, 28);
    assert_eq!(info.source, None, "addresses of a LOCAL header are ignored");
}

#[test]
fn v2_unspec_and_unix_have_no_inet_addresses() {
    // 2.2: UNSPEC: "The receiver should ignore address information"; its bytes are skipped.
    let (len, info) = complete(&v2(0x21, 0x00, &[1, 2, 3, 4, 5]), ProxyMode::V2);
    assert_eq!((len, info.source, info.tlv_len), (21, None, 0));
    // \x31 UNIX stream, 216 address bytes.
    let (len, info) = complete(&v2(0x21, 0x31, &[0; 216]), ProxyMode::V2);
    assert_eq!((len, info.source), (16 + 216, None));
    // \x12 UDP over IPv4 is reported as datagram; the listener decides.
    let (_, info) = complete(&v2(0x21, 0x12, &ipv4_body()), ProxyMode::V2);
    assert_eq!(info.transport, ProxyTransport::Datagram);
}

#[test]
fn v2_tlvs_are_readable_without_allocation() {
    // 2.2.1/2.2.2: TLVs after the address block; AUTHORITY carries the SNI host name.
    let mut body = ipv4_body();
    body.extend_from_slice(&[tlv_type::AUTHORITY, 0, 11]);
    body.extend_from_slice(b"example.com");
    body.extend_from_slice(&[tlv_type::NOOP, 0, 0]);
    body.extend_from_slice(&[tlv_type::UNIQUE_ID, 0, 3, 1, 2, 3]);
    let mut bytes = v2(0x21, 0x11, &body);
    bytes.extend_from_slice(CONNECT);
    let (len, info) = complete(&bytes, ProxyMode::Any);
    assert_eq!(len, 16 + body.len());
    assert_eq!(usize::from(info.tlv_offset), 28);
    assert_eq!(usize::from(info.tlv_len), body.len() - 12);
    let seen: Vec<Tlv<'_>> = tlvs(&bytes[..len], &info).collect();
    assert_eq!(
        seen,
        vec![
            Tlv {
                kind: tlv_type::AUTHORITY,
                value: b"example.com"
            },
            Tlv {
                kind: tlv_type::NOOP,
                value: b""
            },
            Tlv {
                kind: tlv_type::UNIQUE_ID,
                value: &[1, 2, 3]
            },
        ]
    );
    assert_eq!(
        tlvs(
            b"PROXY UNKNOWN\r\n",
            &complete(b"PROXY UNKNOWN\r\n", ProxyMode::V1).1
        )
        .count(),
        0
    );
}

#[test]
fn v2_truncated_arrives_in_pieces() {
    // 2.2: "The receiver must not start to parse an address before the whole address block is
    // received." Partial headers are "need more", bounded by the caller's handshake timeout.
    let bytes = v2(0x21, 0x11, &ipv4_body());
    for end in 0..bytes.len() {
        let expected = if end < 16 { 16 } else { 28 };
        match check(&bytes[..end], ProxyMode::V2) {
            Ok(ProxyCheck::Incomplete { needed_at_least }) => {
                assert_eq!(
                    needed_at_least,
                    if end == 0 { 1 } else { expected },
                    "at {end}"
                )
            }
            other => panic!("at {end}: {other:?}"),
        }
    }
}

#[test]
fn v2_malformed() {
    let mut bad_signature = V2_SIGNATURE[..7].to_vec();
    bad_signature.push(b'X');
    let truncated_tlv = {
        let mut body = ipv4_body();
        body.extend_from_slice(&[tlv_type::AUTHORITY, 0, 10, b'a', b'b']);
        v2(0x21, 0x11, &body)
    };
    let leftover_byte = {
        let mut body = ipv4_body();
        body.push(0);
        v2(0x21, 0x11, &body)
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // 2.2: the signature, rejected from the first wrong byte.
        ("bad signature", bad_signature),
        // "it must always be sent as \x2 and the receiver must only accept this value".
        ("version 1", v2(0x11, 0x11, &ipv4_body())),
        ("version 3", v2(0x31, 0x11, &ipv4_body())),
        // "Receivers must drop connections presenting unexpected values here."
        ("command 2", v2(0x22, 0x11, &ipv4_body())),
        // Other families and protocols "must be rejected as invalid by receivers".
        ("family 4", v2(0x21, 0x41, &ipv4_body())),
        ("protocol 3", v2(0x21, 0x13, &ipv4_body())),
        ("address block too short", v2(0x21, 0x11, &[1, 2, 3, 4])),
        ("ipv6 in 12 bytes", v2(0x21, 0x21, &ipv4_body())),
        ("truncated tlv", truncated_tlv),
        ("leftover byte after tlvs", leftover_byte),
    ];
    for (name, bytes) in cases {
        assert!(
            check(&bytes, ProxyMode::V2).is_err(),
            "{name}: {:?}",
            check(&bytes, ProxyMode::V2)
        );
        assert!(check(&bytes, ProxyMode::Any).is_err(), "{name}");
    }
}

#[test]
fn v2_longer_than_the_bound_is_refused_from_its_fixed_part() {
    let mut fixed = V2_SIGNATURE.to_vec();
    fixed.extend_from_slice(&[0x21, 0x11]);
    fixed.extend_from_slice(&2000u16.to_be_bytes());
    assert_eq!(
        check(&fixed, ProxyMode::V2),
        Err(ProxyError::HeaderTooLong {
            limit: V2_HEADER_LEN_MAX,
            len: 2016
        })
    );
    // Exactly at the bound is accepted.
    let mut body = ipv4_body();
    let pad = V2_HEADER_LEN_MAX - 16 - body.len() - 3;
    body.extend_from_slice(&[tlv_type::NOOP]);
    body.extend_from_slice(&u16::try_from(pad).unwrap().to_be_bytes());
    body.resize(body.len() + pad, 0);
    assert_eq!(
        complete(&v2(0x21, 0x11, &body), ProxyMode::V2).0,
        V2_HEADER_LEN_MAX
    );
}

/// The body of the `proxy_header` fuzz target: every mode, and a consistent verdict.
fn check_any_bytes(data: &[u8]) {
    for mode in [ProxyMode::V1, ProxyMode::V2, ProxyMode::Any] {
        match check(data, mode) {
            Ok(ProxyCheck::Complete { header_len, info }) => {
                assert!(header_len <= data.len());
                assert!(header_len <= V2_HEADER_LEN_MAX);
                let block = usize::from(info.tlv_offset) + usize::from(info.tlv_len);
                assert!(block <= header_len);
                let tlv_bytes: usize = tlvs(&data[..header_len], &info)
                    .map(|t| 3 + t.value.len())
                    .sum();
                assert_eq!(tlv_bytes, usize::from(info.tlv_len));
                assert_eq!(info.source.is_some(), info.destination.is_some());
            }
            Ok(ProxyCheck::Incomplete { needed_at_least }) => assert!(needed_at_least > data.len()),
            Err(_) => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..300)) {
        check_any_bytes(&data);
    }

    #[test]
    fn arbitrary_bytes_after_a_v2_signature(tail in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut data = V2_SIGNATURE.to_vec();
        data.extend(tail);
        check_any_bytes(&data);
    }

    #[test]
    fn arbitrary_v1_lines(tail in "[ -~]{0,110}") {
        let data = format!("PROXY {tail}\r\n");
        check_any_bytes(data.as_bytes());
    }

    /// A valid v2 header with any addresses and TLVs parses to them, and every strict prefix
    /// of it is "need more".
    #[test]
    fn v2_round_trip(
        source in any::<[u8; 4]>(), destination in any::<[u8; 4]>(),
        ports in any::<(u16, u16)>(),
        tlv_values in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..40)), 0..5),
        payload in prop::collection::vec(any::<u8>(), 0..20),
    ) {
        let mut body = source.to_vec();
        body.extend_from_slice(&destination);
        body.extend_from_slice(&ports.0.to_be_bytes());
        body.extend_from_slice(&ports.1.to_be_bytes());
        for (kind, value) in &tlv_values {
            body.push(*kind);
            body.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
            body.extend_from_slice(value);
        }
        let header = v2(0x21, 0x11, &body);
        for end in 0..header.len() {
            let is_incomplete = matches!(check(&header[..end], ProxyMode::Any), Ok(ProxyCheck::Incomplete { .. }));
            prop_assert!(is_incomplete, "prefix {}", end);
        }
        let mut bytes = header.clone();
        bytes.extend_from_slice(&payload);
        let (len, info) = complete(&bytes, ProxyMode::Any);
        prop_assert_eq!(len, header.len());
        prop_assert_eq!(info.source, Some(SocketAddr::new(Ipv4Addr::from(source).into(), ports.0)));
        prop_assert_eq!(info.destination, Some(SocketAddr::new(Ipv4Addr::from(destination).into(), ports.1)));
        let seen: Vec<(u8, Vec<u8>)> = tlvs(&bytes[..len], &info).map(|t| (t.kind, t.value.to_vec())).collect();
        prop_assert_eq!(seen, tlv_values);
    }
}

// --- a real HAProxy ----------------------------------------------------------------------------

mod haproxy {
    //! The headers HAProxy itself sends (`send-proxy`, `send-proxy-v2`) parse to the client's
    //! address. Loopback only; skipped when haproxy is not installed; bounded by `DEADLINE`.

    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use ringmq_wire::proxy::{check, ProxyCheck, ProxyCommand, ProxyMode, ProxyVersion};

    use super::CONNECT;

    const DEADLINE: Duration = Duration::from_secs(10);

    /// Kills and reaps HAProxy and removes its config however the test ends.
    struct Guard {
        child: Child,
        dir: std::path::PathBuf,
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap()
    }

    /// Connects through `frontend` and returns the client's address and what the backend read
    /// up to and including the MQTT bytes.
    fn relay(frontend: u16, backend: &TcpListener) -> (SocketAddr, Vec<u8>) {
        let start = Instant::now();
        let mut client = loop {
            match TcpStream::connect(("127.0.0.1", frontend)) {
                Ok(stream) => break stream,
                Err(_) if start.elapsed() < DEADLINE => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!("haproxy did not come up: {e}"),
            }
        };
        client.write_all(CONNECT).unwrap();
        backend.set_nonblocking(true).unwrap();
        let mut server = loop {
            match backend.accept() {
                Ok((stream, _)) => break stream,
                Err(_) if start.elapsed() < DEADLINE => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("haproxy did not connect to the backend: {e}"),
            }
        };
        server.set_nonblocking(false).unwrap();
        server.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut received = Vec::new();
        let mut chunk = [0u8; 512];
        while !received.ends_with(CONNECT) {
            let n = server.read(&mut chunk).unwrap();
            assert!(n > 0, "backend connection closed early");
            received.extend_from_slice(&chunk[..n]);
        }
        (client.local_addr().unwrap(), received)
    }

    #[test]
    fn haproxy_send_proxy_v1_and_v2() {
        if Command::new("haproxy").arg("-v").output().is_err() {
            eprintln!("skip: haproxy not installed");
            return;
        }
        let (v1_backend, v2_backend) = (
            TcpListener::bind("127.0.0.1:0").unwrap(),
            TcpListener::bind("127.0.0.1:0").unwrap(),
        );
        let (v1_frontend, v2_frontend) = (free_port(), free_port());
        let dir = std::env::temp_dir().join(format!("ringmq-wire-haproxy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 10s\n  timeout server 10s\n\
             frontend f1\n  bind 127.0.0.1:{v1_frontend}\n  default_backend b1\n\
             frontend f2\n  bind 127.0.0.1:{v2_frontend}\n  default_backend b2\n\
             backend b1\n  server s1 {} send-proxy\n\
             backend b2\n  server s2 {} send-proxy-v2\n",
            v1_backend.local_addr().unwrap(),
            v2_backend.local_addr().unwrap(),
        );
        let config_path = dir.join("haproxy.cfg");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let _guard = Guard { child, dir };

        for (frontend, backend, version) in [
            (v1_frontend, &v1_backend, ProxyVersion::V1),
            (v2_frontend, &v2_backend, ProxyVersion::V2),
        ] {
            let (client, received) = relay(frontend, backend);
            let Ok(ProxyCheck::Complete { header_len, info }) = check(&received, ProxyMode::Any)
            else {
                panic!("{version:?}: {received:02x?}");
            };
            assert_eq!(&received[header_len..], CONNECT, "{version:?}");
            assert_eq!(info.version, version);
            assert_eq!(info.command, ProxyCommand::Proxy);
            assert_eq!(info.source, Some(client), "{version:?}");
            assert_eq!(
                info.destination,
                Some(SocketAddr::from(([127, 0, 0, 1], frontend))),
                "{version:?}"
            );
        }
    }
}
