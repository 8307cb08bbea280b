//! MQTT over WebSocket (`wire::ws`): opening handshake and frame transcripts, each naming the
//! RFC 6455 section or MQTT statement it checks, plus property tests of the frame codec.

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
use ringmq_wire::ws::*;
use ringmq_wire::{check, Framing};

const CONFIG: HandshakeConfig<'static> = HandshakeConfig { path: "/mqtt" };

/// What MQTT.js sends (its subprotocol is `mqtt`), with the RFC 6455 1.3 sample key.
const MQTTJS_REQUEST: &[u8] = b"GET /mqtt HTTP/1.1\r\n\
Host: localhost:8080\r\n\
Connection: Upgrade\r\n\
Upgrade: websocket\r\n\
Origin: http://localhost:3000\r\n\
Sec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Protocol: mqtt\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
\r\n";

/// A request with the standard headers plus `extra` lines, at `path`.
fn request(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: broker\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
    .into_bytes()
}

fn handshake(bytes: &[u8]) -> Result<UpgradeRequest<'_>, HandshakeError> {
    match check_request(bytes, 0)? {
        RequestFraming::Complete { request_len } => parse_request(&bytes[..request_len], &CONFIG),
        other => panic!("request not complete: {other:?}"),
    }
}

fn refusal(error: &HandshakeError) -> String {
    let mut out = BytesMut::new();
    error.write_response(&mut out);
    String::from_utf8(out.to_vec()).unwrap()
}

#[test]
fn rfc_1_3_accept_key() {
    // RFC 6455 1.3: the sample nonce and its accept value.
    assert_eq!(
        &accept_key(b"dGhlIHNhbXBsZSBub25jZQ==")[..],
        b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

#[test]
fn mqttjs_upgrade_gets_101_with_mqtt_subprotocol() {
    // RFC 6455 4.2.2; [MQTT-6.0.0-4] the selected subprotocol is "mqtt".
    let upgrade = handshake(MQTTJS_REQUEST).unwrap();
    assert_eq!(upgrade.subprotocol, Some(Subprotocol::Mqtt));
    assert_eq!(upgrade.origin, Some("http://localhost:3000"));
    assert_eq!(upgrade.host, "localhost:8080");
    assert_eq!(upgrade.forwarded_for, None);
    assert_eq!(upgrade.accept_key(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    let mut out = BytesMut::new();
    upgrade.write_response(&mut out);
    // No Sec-WebSocket-Extensions: permessage-deflate is not negotiated (RFC 6455 9.1).
    assert_eq!(
        &out[..],
        b"HTTP/1.1 101 Switching Protocols\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
Sec-WebSocket-Protocol: mqtt\r\n\
\r\n"
    );
}

#[test]
fn request_arrives_byte_by_byte_and_frames_may_follow() {
    let mut bytes = MQTTJS_REQUEST.to_vec();
    bytes.extend_from_slice(&[0x82, 0x80, 1, 2, 3, 4]);
    let mut scanned_len = 0;
    for end in 1..MQTTJS_REQUEST.len() {
        match check_request(&bytes[..end], scanned_len) {
            Ok(RequestFraming::Incomplete { scanned_len: s }) => scanned_len = s,
            other => panic!("at {end}: {other:?}"),
        }
    }
    for end in MQTTJS_REQUEST.len()..=bytes.len() {
        assert_eq!(
            check_request(&bytes[..end], scanned_len),
            Ok(RequestFraming::Complete {
                request_len: MQTTJS_REQUEST.len()
            })
        );
    }
}

#[test]
fn connection_token_list_and_case() {
    // RFC 6455 4.2.1 items 3 and 4: Upgrade contains "websocket" and Connection contains
    // "Upgrade", case-insensitively; Firefox sends "keep-alive, Upgrade".
    let bytes = b"GET /mqtt HTTP/1.1\r\nhost: b\r\nUPGRADE: WebSocket\r\nconnection: keep-alive, Upgrade\r\n\
sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let upgrade = handshake(bytes).unwrap();
    // No subprotocol offered: accepted, and none named in the reply.
    assert_eq!(upgrade.subprotocol, None);
    let mut out = BytesMut::new();
    upgrade.write_response(&mut out);
    assert!(!String::from_utf8_lossy(&out).contains("Sec-WebSocket-Protocol"));
}

#[test]
fn subprotocol_is_the_first_offered_that_we_speak() {
    // RFC 6455 4.2.2 item 5.4: the server picks one of the client's; MQTT 3.1 used "mqttv3.1".
    let bytes = request("/mqtt", "Sec-WebSocket-Protocol: chat, mqttv3.1, mqtt\r\n");
    assert_eq!(
        handshake(&bytes).unwrap().subprotocol,
        Some(Subprotocol::MqttV31)
    );
    let bytes = request(
        "/mqtt",
        "Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: mqtt\r\n",
    );
    assert_eq!(
        handshake(&bytes).unwrap().subprotocol,
        Some(Subprotocol::Mqtt)
    );
    // Subprotocol names compare exactly.
    let bytes = request("/mqtt", "Sec-WebSocket-Protocol: MQTT\r\n");
    assert_eq!(handshake(&bytes), Err(HandshakeError::NoSubprotocol));
}

#[test]
fn offered_subprotocols_none_of_ours_is_400() {
    // [MQTT-6.0.0-3]: a client must offer "mqtt"; one that offers only others is refused.
    let bytes = request("/mqtt", "Sec-WebSocket-Protocol: chat, superchat\r\n");
    let error = handshake(&bytes).unwrap_err();
    assert_eq!(error, HandshakeError::NoSubprotocol);
    assert!(refusal(&error).starts_with("HTTP/1.1 400 Bad Request\r\n"));
}

#[test]
fn origin_and_forwarded_for_are_exposed() {
    let bytes = request(
        "/mqtt?token=x",
        "Origin: https://app.example\r\nX-Forwarded-For: 203.0.113.7, 10.0.0.1\r\n",
    );
    let upgrade = handshake(&bytes).unwrap();
    assert_eq!(upgrade.origin, Some("https://app.example"));
    assert_eq!(upgrade.forwarded_for, Some("203.0.113.7, 10.0.0.1"));
    // The query string is not part of the path match.
    assert_eq!(upgrade.target, "/mqtt?token=x");
}

#[test]
fn wrong_path_is_404() {
    let error = handshake(&request("/chat", "")).unwrap_err();
    assert_eq!(error, HandshakeError::PathNotFound);
    assert_eq!(
        refusal(&error),
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(
        handshake(&request("/mqtt/", "")),
        Err(HandshakeError::PathNotFound)
    );
    assert!(handshake(&request("ws://broker/mqtt", "")).is_ok());
}

#[test]
fn plain_http_get_is_426() {
    // RFC 6455 4.2.1: without Upgrade/Connection this is no handshake; tell the client to upgrade.
    let bytes = b"GET /mqtt HTTP/1.1\r\nHost: b\r\n\r\n";
    let error = handshake(bytes).unwrap_err();
    assert_eq!(error, HandshakeError::NotUpgrade);
    assert_eq!(error.status(), 426);
    assert!(refusal(&error).contains("Sec-WebSocket-Version: 13\r\n"));
    let bytes =
        b"GET /mqtt HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    assert_eq!(handshake(bytes), Err(HandshakeError::NotUpgrade));
}

#[test]
fn other_version_is_426_naming_13() {
    // RFC 6455 4.4: answer with the versions the server speaks.
    let bytes = b"GET /mqtt HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let error = handshake(bytes).unwrap_err();
    assert_eq!(error, HandshakeError::UnsupportedVersion);
    assert!(refusal(&error).starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
    assert!(refusal(&error).contains("Sec-WebSocket-Version: 13\r\n"));
}

#[test]
fn bad_requests_are_400() {
    let cases: &[(&[u8], HandshakeError)] = &[
        // RFC 6455 4.2.1 item 1: GET, HTTP/1.1 or later.
        (
            b"GET /mqtt HTTP/1.0\r\nHost: b\r\n\r\n",
            HandshakeError::HttpVersion,
        ),
        (
            b"GET /mqtt\r\nHost: b\r\n\r\n",
            HandshakeError::Malformed {
                reason: "request line is not `method target version`",
            },
        ),
        // Item 2: Host is required.
        (
            b"GET /mqtt HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            HandshakeError::MissingHost,
        ),
        // Obsolete line folding is refused (RFC 9110 5.5).
        (
            b"GET /mqtt HTTP/1.1\r\nHost: b\r\n folded\r\n\r\n",
            HandshakeError::Malformed {
                reason: "obsolete line folding",
            },
        ),
        (
            b"GET /mqtt HTTP/1.1\r\nHost: b\r\nX Y: z\r\n\r\n",
            HandshakeError::Malformed {
                reason: "bad header name",
            },
        ),
        (
            b"GET /mqtt HTTP/1.1\r\nHost b\r\n\r\n",
            HandshakeError::Malformed {
                reason: "header line without a colon",
            },
        ),
        (
            b"GET /mqtt HTTP/1.1\r\nHost: b\r\nHost: c\r\n\r\n",
            HandshakeError::DuplicateHeader { name: "Host" },
        ),
        (
            b"GET /mqtt HTTP/1.1\r\nHost: b\x01\r\n\r\n",
            HandshakeError::Malformed {
                reason: "control character in a header value",
            },
        ),
    ];
    for (bytes, expected) in cases {
        let error = handshake(bytes).unwrap_err();
        assert_eq!(&error, expected, "{}", String::from_utf8_lossy(bytes));
        assert_eq!(error.status(), 400);
    }
}

#[test]
fn key_must_be_16_bytes_of_base64() {
    // RFC 6455 4.2.1 item 5.
    for key in [
        "",
        "dGhlIHNhbXBsZSBub25jZQ",
        "dGhlIHNhbXBsZSBub25jZQ==AA",
        "!!!!IHNhbXBsZSBub25jZQ==",
    ] {
        let bytes = format!(
            "GET /mqtt HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        );
        assert_eq!(
            handshake(bytes.as_bytes()),
            Err(HandshakeError::BadKey),
            "{key}"
        );
    }
    let bytes = b"GET /mqtt HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";
    assert_eq!(handshake(bytes), Err(HandshakeError::BadKey));
    let twice = request("/mqtt", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n");
    assert_eq!(
        handshake(&twice),
        Err(HandshakeError::DuplicateHeader {
            name: "Sec-WebSocket-Key"
        })
    );
}

#[test]
fn not_get_is_refused_from_the_first_bytes() {
    assert_eq!(
        check_request(b"GE", 0),
        Ok(RequestFraming::Incomplete { scanned_len: 2 })
    );
    assert_eq!(
        check_request(b"POST /mqtt", 0),
        Err(HandshakeError::MethodNotGet)
    );
    // Raw MQTT on a WebSocket port (a CONNECT) is refused at once too.
    assert_eq!(
        check_request(&[0x10, 0x0C], 0),
        Err(HandshakeError::MethodNotGet)
    );
}

#[test]
fn oversized_request_and_too_many_headers_are_431() {
    let mut big = b"GET /mqtt HTTP/1.1\r\nHost: b\r\nCookie: ".to_vec();
    big.resize(REQUEST_LEN_MAX, b'a');
    let error = check_request(&big, 0).unwrap_err();
    assert_eq!(
        error,
        HandshakeError::RequestTooLarge {
            limit: REQUEST_LEN_MAX
        }
    );
    assert!(refusal(&error).starts_with("HTTP/1.1 431 "));
    let many: String = (0..REQUEST_HEADERS_MAX)
        .map(|i| format!("X-{i}: y\r\n"))
        .collect();
    let error = handshake(&request("/mqtt", &many)).unwrap_err();
    assert_eq!(
        error,
        HandshakeError::TooManyHeaders {
            limit: REQUEST_HEADERS_MAX
        }
    );
    assert_eq!(error.status(), 431);
}

// --- frames ----------------------------------------------------------------------------------

/// Runs the decoder over `input` until it needs more bytes, collecting MQTT bytes and events.
fn decode_events(
    decoder: &mut FrameDecoder,
    input: &mut BytesMut,
    mqtt: &mut BytesMut,
) -> Result<Vec<Decoded>, FrameError> {
    let mut events = Vec::new();
    loop {
        match decoder.decode(input, mqtt)? {
            Decoded::NeedMore { .. } => return Ok(events),
            event => events.push(event),
        }
    }
}

fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_client_frame(fin, opcode, payload, [0x37, 0xfa, 0x21, 0x3d], &mut out);
    out.to_vec()
}

/// Decodes `bytes` in one go and returns the error it must end in.
fn frame_error(bytes: &[u8]) -> FrameError {
    let (_, replies, error) = decode_all(bytes, 1024);
    let error = error.unwrap_or_else(|| panic!("{bytes:02x?} decoded without error"));
    // The decoder's answer is a close frame with the error's code (RFC 6455 7.1.7).
    let code = error.close_code().0.to_be_bytes();
    assert!(replies.ends_with(&[0x88, 0x02, code[0], code[1]]));
    error
}

#[test]
fn rfc_5_7_masked_hello() {
    // RFC 6455 5.7: "a single-frame masked text message" — as binary it carries "Hello".
    let mut frame = vec![
        0x82, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    assert_eq!(client_frame(true, opcode::BINARY, b"Hello"), frame);
    let (mqtt, replies, error) = decode_all(&frame, 1024);
    assert_eq!(
        (&mqtt[..], &replies[..], error),
        (&b"Hello"[..], &b""[..], None)
    );
    // As text it is unsupported data [MQTT-6.0.0-1], close 1003.
    frame[0] = 0x81;
    let error = frame_error(&frame);
    assert_eq!(error, FrameError::TextFrame);
    assert_eq!(error.close_code(), CloseCode::UNSUPPORTED_DATA);
}

#[test]
fn rfc_5_7_unmasked_frames_are_refused_from_clients() {
    // RFC 6455 5.1: "a server MUST close the connection upon receiving a frame that is not
    // masked" (1002). The 5.7 unmasked examples, as a client would wrongly send them.
    for frame in [
        &[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f][..],
        &[0x01, 0x03, 0x48, 0x65, 0x6c],
        &[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f],
        &[0x82, 0x7E, 0x01, 0x00],
    ] {
        let error = frame_error(frame);
        assert_eq!(error, FrameError::Unmasked);
        assert_eq!(error.close_code(), CloseCode::PROTOCOL_ERROR);
    }
}

#[test]
fn rfc_5_7_server_frames() {
    // RFC 6455 5.7: a fragmented unmasked text message, unmasked ping, 256 B and 64 KiB binary.
    let mut out = BytesMut::new();
    encode_frame_header(false, opcode::TEXT, 3, None, &mut out);
    out.extend_from_slice(b"Hel");
    encode_frame_header(true, opcode::CONTINUATION, 2, None, &mut out);
    out.extend_from_slice(b"lo");
    assert_eq!(
        &out[..],
        &[0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f]
    );

    out.clear();
    encode_pong(b"Hello", &mut out);
    assert_eq!(&out[..], &[0x8a, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);

    out.clear();
    encode_binary(&[0u8; 256], &mut out);
    assert_eq!(&out[..4], &[0x82, 0x7E, 0x01, 0x00]);
    assert_eq!(out.len(), 4 + 256);

    out.clear();
    encode_binary(&vec![0u8; 65536], &mut out);
    assert_eq!(&out[..10], &[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]);
    assert_eq!(frame_header_len(65536, false), 10);
    assert_eq!(frame_header_len(65535, true), 8);
}

#[test]
fn rfc_5_7_masked_pong_is_ignored() {
    // RFC 6455 5.7 "a masked Pong response"; 5.5.3: nothing to answer.
    let frame = [
        0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    let mut decoder = FrameDecoder::new(1024);
    let (mut input, mut mqtt) = (BytesMut::from(&frame[..]), BytesMut::new());
    let events = decode_events(&mut decoder, &mut input, &mut mqtt).unwrap();
    assert_eq!(
        events,
        vec![Decoded::Pong(bytes::Bytes::from_static(b"Hello"))]
    );
    assert!(mqtt.is_empty());
}

#[test]
fn ping_is_answered_with_the_same_payload() {
    // RFC 6455 5.5.2 / 5.5.3: the pong carries the ping's application data.
    let (_, replies, error) = decode_all(&client_frame(true, opcode::PING, b"are you there"), 1024);
    assert_eq!(error, None);
    let mut expected = BytesMut::new();
    encode_pong(b"are you there", &mut expected);
    assert_eq!(replies, expected);
}

#[test]
fn fragmented_message_with_a_ping_between_fragments() {
    // RFC 6455 5.4: control frames may be injected in the middle of a fragmented message.
    let mut bytes = client_frame(false, opcode::BINARY, b"ab");
    bytes.extend(client_frame(true, opcode::PING, b"x"));
    bytes.extend(client_frame(false, opcode::CONTINUATION, b"cd"));
    bytes.extend(client_frame(true, opcode::CONTINUATION, b"ef"));
    let mut decoder = FrameDecoder::new(1024);
    let (mut input, mut mqtt) = (BytesMut::from(&bytes[..]), BytesMut::new());
    let events = decode_events(&mut decoder, &mut input, &mut mqtt).unwrap();
    assert_eq!(events, vec![Decoded::Ping(bytes::Bytes::from_static(b"x"))]);
    assert_eq!(&mqtt[..], b"abcdef");
    assert!(input.is_empty());
    assert!(decoder.is_idle());
}

/// CONNECT, v3.1.1, client id "a".
const CONNECT: &[u8] = &[
    0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'a',
];
const PINGREQ: &[u8] = &[0xC0, 0x00];

/// Splits the MQTT stream into whole frames with `wire::check`.
fn mqtt_frames(mut stream: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    while let Ok(Framing::Complete { frame_len }) = check(stream, 1 << 20) {
        frames.push(stream[..frame_len].to_vec());
        stream = &stream[frame_len..];
    }
    assert!(stream.is_empty(), "left over {stream:02x?}");
    frames
}

#[test]
fn mqtt_packet_spanning_frames() {
    // [MQTT-6.0.0-2]: the receiver must not assume packets are aligned on frame boundaries.
    let mut bytes = client_frame(true, opcode::BINARY, &CONNECT[..5]);
    bytes.extend(client_frame(true, opcode::BINARY, &CONNECT[5..9]));
    bytes.extend(client_frame(true, opcode::BINARY, &CONNECT[9..]));
    let (mqtt, _, error) = decode_all(&bytes, 1024);
    assert_eq!(error, None);
    assert_eq!(mqtt_frames(&mqtt), vec![CONNECT.to_vec()]);
}

#[test]
fn mqtt_packets_sharing_a_frame() {
    // [MQTT-6.0.0-2]: several packets in one frame.
    let mut payload = CONNECT.to_vec();
    payload.extend_from_slice(PINGREQ);
    payload.extend_from_slice(PINGREQ);
    let (mqtt, _, error) = decode_all(&client_frame(true, opcode::BINARY, &payload), 1024);
    assert_eq!(error, None);
    assert_eq!(
        mqtt_frames(&mqtt),
        vec![CONNECT.to_vec(), PINGREQ.to_vec(), PINGREQ.to_vec()]
    );
}

#[test]
fn input_byte_by_byte_keeps_only_partial_headers() {
    let mut bytes = client_frame(true, opcode::BINARY, CONNECT);
    bytes.extend(client_frame(true, opcode::PING, b"p"));
    bytes.extend(client_frame(true, opcode::BINARY, PINGREQ));
    let mut decoder = FrameDecoder::new(1024);
    let (mut input, mut mqtt, mut events) = (BytesMut::new(), BytesMut::new(), Vec::new());
    for &byte in &bytes {
        input.put_u8(byte);
        events.extend(decode_events(&mut decoder, &mut input, &mut mqtt).unwrap());
        // Payload bytes never wait in the input; at most a header or a control frame does.
        assert!(input.len() <= FRAME_HEADER_LEN_MAX + CONTROL_PAYLOAD_LEN_MAX);
    }
    assert_eq!(events, vec![Decoded::Ping(bytes::Bytes::from_static(b"p"))]);
    assert_eq!(mqtt_frames(&mqtt), vec![CONNECT.to_vec(), PINGREQ.to_vec()]);
}

#[test]
fn decoder_state_is_a_few_bytes() {
    // Issue 10: no per-connection buffer while idle; this is all a connection keeps.
    let size = std::mem::size_of::<FrameDecoder>();
    println!("size_of::<FrameDecoder>() = {size}");
    assert!(size <= 20);
}

#[test]
fn close_is_echoed() {
    // RFC 6455 5.5.1: answer a close with a close, typically echoing the status code.
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    let mut decoder = FrameDecoder::new(1024);
    let mut input = BytesMut::from(&client_frame(true, opcode::CLOSE, &payload)[..]);
    let mut mqtt = BytesMut::new();
    let events = decode_events(&mut decoder, &mut input, &mut mqtt).unwrap();
    assert_eq!(
        events,
        vec![Decoded::Close {
            code: Some(CloseCode::NORMAL),
            reason: bytes::Bytes::from_static(b"bye")
        }]
    );
    let mut reply = BytesMut::new();
    encode_close(Some(CloseCode::NORMAL), "", &mut reply);
    assert_eq!(&reply[..], &[0x88, 0x02, 0x03, 0xE8]);
    // RFC 6455 5.5.1: after a close frame no more data frames.
    input.extend_from_slice(&client_frame(true, opcode::BINARY, PINGREQ));
    assert_eq!(
        decoder.decode(&mut input, &mut mqtt),
        Err(FrameError::DataAfterClose)
    );
}

#[test]
fn empty_close_is_answered_with_an_empty_close() {
    let (_, replies, error) = decode_all(&client_frame(true, opcode::CLOSE, b""), 1024);
    assert_eq!(error, None);
    assert_eq!(&replies[..], &[0x88, 0x00]);
}

#[test]
fn close_reason_is_cut_at_a_character_boundary() {
    let reason = "é".repeat(100);
    let mut out = BytesMut::new();
    encode_close(Some(CloseCode::GOING_AWAY), &reason, &mut out);
    // 2 + 122 bytes (61 two-byte characters; 123 would split one).
    assert_eq!(&out[..2], &[0x88, 124]);
    assert!(std::str::from_utf8(&out[4..]).is_ok());
}

#[test]
fn every_close_condition() {
    let huge = {
        let mut out = BytesMut::new();
        encode_frame_header(true, opcode::BINARY, 1 << 40, Some([1, 2, 3, 4]), &mut out);
        out.to_vec()
    };
    let mut len_127_high_bit = vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0];
    len_127_high_bit.extend_from_slice(&[1, 2, 3, 4]);
    let fragments_too_big = [
        client_frame(false, opcode::BINARY, &[0; 600]),
        client_frame(true, opcode::CONTINUATION, &[0; 600]),
    ]
    .concat();
    let cases: Vec<(&str, Vec<u8>, FrameError, u16)> = vec![
        // RFC 6455 5.2: RSV1-3 must be 0 without an extension that defines them.
        (
            "rsv1",
            vec![0xC2, 0x80, 1, 2, 3, 4],
            FrameError::ReservedBits { bits: 0x40 },
            1002,
        ),
        (
            "rsv3",
            vec![0x92, 0x80, 1, 2, 3, 4],
            FrameError::ReservedBits { bits: 0x10 },
            1002,
        ),
        // 5.2: reserved opcodes.
        (
            "opcode 3",
            vec![0x83, 0x80, 1, 2, 3, 4],
            FrameError::ReservedOpcode { opcode: 3 },
            1002,
        ),
        (
            "opcode 0xB",
            vec![0x8B, 0x80, 1, 2, 3, 4],
            FrameError::ReservedOpcode { opcode: 0xB },
            1002,
        ),
        // 5.5: control frames are not fragmented and carry at most 125 bytes.
        (
            "ping fin=0",
            client_frame(false, opcode::PING, b""),
            FrameError::ControlFragmented,
            1002,
        ),
        (
            "ping 126 B",
            client_frame(true, opcode::PING, &[0; 126]),
            FrameError::ControlTooLong { len: 126 },
            1002,
        ),
        // 5.4: continuation only inside a fragmented message, and nothing else inside one.
        (
            "stray continuation",
            client_frame(true, opcode::CONTINUATION, b"a"),
            FrameError::UnexpectedContinuation,
            1002,
        ),
        (
            "binary inside a message",
            [
                client_frame(false, opcode::BINARY, b"a"),
                client_frame(true, opcode::BINARY, b"b"),
            ]
            .concat(),
            FrameError::ExpectedContinuation,
            1002,
        ),
        // 5.2: "the minimal number of bytes MUST be used to encode the length".
        (
            "16-bit length 100",
            vec![0x82, 0xFE, 0, 100, 1, 2, 3, 4],
            FrameError::NonMinimalLength,
            1002,
        ),
        (
            "64-bit length 200",
            vec![0x82, 0xFF, 0, 0, 0, 0, 0, 0, 0, 200, 1, 2, 3, 4],
            FrameError::NonMinimalLength,
            1002,
        ),
        // 5.2: "the most significant bit MUST be 0".
        (
            "64-bit high bit",
            len_127_high_bit,
            FrameError::LengthHighBit,
            1002,
        ),
        // 7.4.1: 1009 for a message too big to process; refused from its header alone.
        (
            "1 TiB frame",
            huge,
            FrameError::MessageTooBig {
                limit: 1024,
                size: 1 << 40,
            },
            1009,
        ),
        (
            "fragments over the bound",
            fragments_too_big,
            FrameError::MessageTooBig {
                limit: 1024,
                size: 1200,
            },
            1009,
        ),
        // 5.5.1: a close body is empty or starts with a 2-byte code.
        (
            "close 1 byte",
            client_frame(true, opcode::CLOSE, &[3]),
            FrameError::CloseTooShort,
            1002,
        ),
        // 7.4.1/7.4.2: 1005 and 1006 must not be sent; below 1000 is not used.
        (
            "close 1005",
            client_frame(true, opcode::CLOSE, &1005u16.to_be_bytes()),
            FrameError::InvalidCloseCode { code: 1005 },
            1002,
        ),
        (
            "close 999",
            client_frame(true, opcode::CLOSE, &999u16.to_be_bytes()),
            FrameError::InvalidCloseCode { code: 999 },
            1002,
        ),
        (
            "close 2000",
            client_frame(true, opcode::CLOSE, &2000u16.to_be_bytes()),
            FrameError::InvalidCloseCode { code: 2000 },
            1002,
        ),
        // 8.1: an invalid UTF-8 close reason fails the connection with 1007.
        (
            "close reason not utf-8",
            client_frame(true, opcode::CLOSE, &[0x03, 0xE8, 0xFF]),
            FrameError::CloseReasonNotUtf8,
            1007,
        ),
        // [MQTT-6.0.0-1]: binary frames only.
        (
            "text",
            client_frame(true, opcode::TEXT, b"{}"),
            FrameError::TextFrame,
            1003,
        ),
        ("unmasked", vec![0x82, 0x00], FrameError::Unmasked, 1002),
    ];
    for (name, bytes, expected, code) in cases {
        let error = frame_error(&bytes);
        assert_eq!(error, expected, "{name}");
        assert_eq!(error.close_code(), CloseCode(code), "{name}");
    }
    // Codes a peer may send are accepted, 3000-4999 included.
    for code in [1000u16, 1001, 1011, 3000, 4999] {
        let (_, _, error) = decode_all(&client_frame(true, opcode::CLOSE, &code.to_be_bytes()), 64);
        assert_eq!(error, None, "{code}");
    }
}

#[test]
fn message_bound_counts_the_whole_message() {
    // Exactly at the bound is fine, across fragments too.
    let bytes = [
        client_frame(false, opcode::BINARY, &[7; 600]),
        client_frame(true, opcode::CONTINUATION, &[7; 424]),
        client_frame(true, opcode::BINARY, &[7; 1024]),
    ]
    .concat();
    let (mqtt, _, error) = decode_all(&bytes, 1024);
    assert_eq!(error, None);
    assert_eq!(mqtt.len(), 2048);
}

/// A server frame turned into the client frame a client would send: mask bit, key, masked
/// payload. Checks the encoder's header layout along the way.
fn mask_server_frame(frame: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let header_len = match frame[1] & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    assert_eq!(frame[1] & 0x80, 0, "server frames are not masked");
    let mut out = frame[..header_len].to_vec();
    out[1] |= 0x80;
    out.extend_from_slice(&mask);
    let mut payload = frame[header_len..].to_vec();
    apply_mask(&mut payload, mask);
    out.extend(payload);
    out
}

fn split_points(len: usize, cuts: &[usize]) -> Vec<usize> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (len + 1)).collect();
    points.push(0);
    points.push(len);
    points.sort_unstable();
    points
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn server_frame_masked_as_client_decodes_to_its_payload(
        payload in prop::collection::vec(any::<u8>(), 0..70_000),
        mask in any::<[u8; 4]>(),
    ) {
        let mut frame = BytesMut::new();
        encode_binary(&payload, &mut frame);
        prop_assert_eq!(frame.len(), frame_header_len(payload.len(), false) + payload.len());
        let (mqtt, replies, error) = decode_all(&mask_server_frame(&frame, mask), 1 << 20);
        prop_assert_eq!(error, None);
        prop_assert!(replies.is_empty());
        prop_assert_eq!(&mqtt[..], &payload[..]);
    }

    /// Messages cut into fragments with pings between them, the stream cut at arbitrary points:
    /// the MQTT bytes are the messages concatenated and each ping is answered once.
    #[test]
    fn fragmented_stream_in_arbitrary_pieces(
        messages in prop::collection::vec(
            (prop::collection::vec(any::<u8>(), 0..300), prop::collection::vec(any::<usize>(), 0..4), any::<[u8; 4]>()),
            1..8,
        ),
        pings in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..=125), 0..4),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut stream = Vec::new();
        let mut expected_mqtt = Vec::new();
        let mut expected_pings = Vec::new();
        for (i, (message, fragment_cuts, mask)) in messages.iter().enumerate() {
            expected_mqtt.extend_from_slice(message);
            let points = split_points(message.len(), fragment_cuts);
            let fragments: Vec<&[u8]> = points.windows(2).map(|w| &message[w[0]..w[1]]).collect();
            for (j, fragment) in fragments.iter().enumerate() {
                let opcode = if j == 0 { opcode::BINARY } else { opcode::CONTINUATION };
                let mut out = BytesMut::new();
                encode_client_frame(j + 1 == fragments.len(), opcode, fragment, *mask, &mut out);
                stream.extend_from_slice(&out);
                if j == 0 {
                    if let Some(ping) = pings.get(i) {
                        stream.extend(client_frame(true, opcode::PING, ping));
                        expected_pings.push(ping.clone());
                    }
                }
            }
        }
        let mut decoder = FrameDecoder::new(1 << 20);
        let (mut input, mut mqtt, mut seen_pings) = (BytesMut::new(), BytesMut::new(), Vec::new());
        for piece in split_points(stream.len(), &cuts).windows(2) {
            input.extend_from_slice(&stream[piece[0]..piece[1]]);
            for event in decode_events(&mut decoder, &mut input, &mut mqtt).unwrap() {
                match event {
                    Decoded::Ping(payload) => seen_pings.push(payload.to_vec()),
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
        }
        prop_assert!(input.is_empty());
        prop_assert!(decoder.is_idle());
        prop_assert_eq!(&mqtt[..], &expected_mqtt[..]);
        prop_assert_eq!(seen_pings, expected_pings);
    }

    /// Arbitrary bytes never panic the decoder, and feeding them in pieces gives the same MQTT
    /// bytes and the same verdict as feeding them at once. The `ws_frames` fuzz target's body.
    #[test]
    fn arbitrary_bytes_same_verdict_in_pieces(
        data in prop::collection::vec(any::<u8>(), 0..400),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let (whole_mqtt, _, whole_error) = decode_all(&data, 256);
        let mut decoder = FrameDecoder::new(256);
        let (mut input, mut mqtt) = (BytesMut::new(), BytesMut::new());
        let mut error = None;
        'feed: for piece in split_points(data.len(), &cuts).windows(2) {
            input.extend_from_slice(&data[piece[0]..piece[1]]);
            loop {
                match decoder.decode(&mut input, &mut mqtt) {
                    Ok(Decoded::NeedMore { needed_at_least }) => {
                        prop_assert!(needed_at_least > input.len());
                        break;
                    }
                    Ok(Decoded::Close { .. }) => break 'feed,
                    Ok(_) => {}
                    Err(e) => { error = Some(e); break 'feed; }
                }
            }
        }
        prop_assert_eq!(&mqtt[..], &whole_mqtt[..]);
        prop_assert_eq!(error, whole_error);
    }

    #[test]
    fn masking_in_pieces_equals_masking_at_once(
        data in prop::collection::vec(any::<u8>(), 0..100),
        cut in any::<usize>(),
        mask in any::<[u8; 4]>(),
    ) {
        let mut whole = data.clone();
        apply_mask(&mut whole, mask);
        let mut pieces = data.clone();
        let cut = cut % (data.len() + 1);
        let next = apply_mask(&mut pieces[..cut], mask);
        apply_mask(&mut pieces[cut..], next);
        prop_assert_eq!(pieces, whole);
    }

    /// The handshake parser never panics, whatever the request holds.
    #[test]
    fn arbitrary_requests_do_not_panic(tail in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut bytes = b"GET /mqtt HTTP/1.1\r\n".to_vec();
        bytes.extend(tail);
        bytes.extend_from_slice(b"\r\n\r\n");
        if let Ok(RequestFraming::Complete { request_len }) = check_request(&bytes, 0) {
            let _ = parse_request(&bytes[..request_len], &CONFIG);
        }
    }
}

mod mqttjs {
    //! MQTT.js (over Node's `ws`) against a minimal loopback server built from `wire::ws` and
    //! the MQTT codec: handshake, a CONNACK split over two frames, a 70 kB PUBLISH (64-bit
    //! length), DISCONNECT and the closing handshake. Needs node and a directory holding
    //! `node_modules/mqtt` in `RINGMQ_MQTTJS_DIR` (`npm install mqtt@5`); skipped otherwise.
    //! Every wait is bounded by `DEADLINE`.

    use std::io::{ErrorKind, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use bytes::{Bytes, BytesMut};
    use ringmq_wire::ws::*;
    use ringmq_wire::{check, decode, Framing, Packet, ProtocolVersion};

    const DEADLINE: Duration = Duration::from_secs(15);
    const PAYLOAD_LEN: usize = 70_000;

    struct KillOnDrop(Child);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Reads once into `buf`; false on EOF.
    fn read_some(stream: &mut TcpStream, buf: &mut BytesMut, start: Instant) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            assert!(start.elapsed() < DEADLINE, "timed out");
            match stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    return true;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Runs the server side of one connection; returns the MQTT packets the client sent.
    fn serve(mut stream: TcpStream, start: Instant) -> (Option<Subprotocol>, Vec<Packet>) {
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut input = BytesMut::new();
        let mut scanned_len = 0;
        let request_len = loop {
            match check_request(&input, scanned_len).unwrap() {
                RequestFraming::Complete { request_len } => break request_len,
                RequestFraming::Incomplete { scanned_len: s } => scanned_len = s,
            }
            assert!(
                read_some(&mut stream, &mut input, start),
                "eof in handshake"
            );
        };
        let request = input.split_to(request_len);
        let upgrade = parse_request(&request, &HandshakeConfig { path: "/mqtt" }).unwrap();
        let mut out = BytesMut::new();
        upgrade.write_response(&mut out);
        stream.write_all(&out).unwrap();

        let mut decoder = FrameDecoder::new(1 << 20);
        let (mut mqtt, mut packets) = (BytesMut::new(), Vec::new());
        loop {
            out.clear();
            let mut closed = false;
            loop {
                match decoder.decode(&mut input, &mut mqtt).unwrap() {
                    Decoded::NeedMore { .. } => break,
                    Decoded::Ping(payload) => encode_pong(&payload, &mut out),
                    Decoded::Pong(_) => {}
                    Decoded::Close { code, .. } => {
                        encode_close(code, "", &mut out);
                        closed = true;
                        break;
                    }
                }
            }
            while let Ok(Framing::Complete { frame_len }) = check(&mqtt, 1 << 20) {
                let frame = mqtt.split_to(frame_len).freeze();
                let packet = decode(frame, ProtocolVersion::V3_1_1).unwrap();
                if matches!(packet, Packet::Connect(_)) {
                    // CONNACK split over two frames: the client must reassemble it.
                    encode_binary(&[0x20], &mut out);
                    encode_binary(&[0x02, 0x00, 0x00], &mut out);
                }
                packets.push(packet);
            }
            stream.write_all(&out).unwrap();
            if closed || !read_some(&mut stream, &mut input, start) {
                return (upgrade.subprotocol, packets);
            }
        }
    }

    #[test]
    fn mqttjs_connects_publishes_and_closes() {
        let Some(dir) = std::env::var_os("RINGMQ_MQTTJS_DIR") else {
            eprintln!("skip: RINGMQ_MQTTJS_DIR not set (a directory with node_modules/mqtt)");
            return;
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let script = format!(
            "const mqtt = require('mqtt');\n\
             setTimeout(() => {{ console.error('timeout'); process.exit(2); }}, 10000);\n\
             const c = mqtt.connect('ws://127.0.0.1:{port}/mqtt', {{ protocolVersion: 4,\n\
               clientId: 'edge', reconnectPeriod: 0, connectTimeout: 5000 }});\n\
             c.on('error', (e) => {{ console.error(e); process.exit(1); }});\n\
             c.on('connect', () => c.publish('t/edge', Buffer.alloc({PAYLOAD_LEN}, 7), {{ qos: 0 }},\n\
               () => c.end(false, () => process.exit(0))));\n"
        );
        let child = Command::new("node")
            .arg("-e")
            .arg(script)
            .current_dir(dir)
            .stdout(Stdio::null())
            .spawn();
        let Ok(child) = child else {
            eprintln!("skip: node not installed");
            return;
        };
        let mut child = KillOnDrop(child);
        let start = Instant::now();
        listener.set_nonblocking(true).unwrap();
        let stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(_) if start.elapsed() < DEADLINE => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("mqtt.js did not connect: {e}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        let (subprotocol, packets) = serve(stream, start);
        // [MQTT-6.0.0-3]/[MQTT-6.0.0-4]: MQTT.js offers "mqtt" and gets it.
        assert_eq!(subprotocol, Some(Subprotocol::Mqtt));
        let [Packet::Connect(connect), Packet::Publish(publish), Packet::Disconnect(_)] =
            &packets[..]
        else {
            panic!("unexpected packets: {packets:?}");
        };
        assert_eq!(connect.client_id, "edge");
        assert_eq!(publish.topic, "t/edge");
        assert_eq!(publish.payload, Bytes::from(vec![7u8; PAYLOAD_LEN]));
        let status = loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                break status;
            }
            assert!(start.elapsed() < DEADLINE, "node did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "node exited with {status}");
    }
}

#[test]
fn non_utf8_in_unused_headers_is_accepted() {
    // RFC 9110 5.5 obs-text: a cookie with raw UTF-8 or Latin-1 bytes must not break the
    // upgrade; only the headers the handshake reads must be UTF-8.
    let mut bytes = request("/mqtt", "");
    let at = bytes.len() - 2;
    bytes.splice(
        at..at,
        b"Cookie: name=caf\xe9; x=\xc3\xa9\r\n".iter().copied(),
    );
    assert_eq!(handshake(&bytes).unwrap().subprotocol, None);
    let mut bytes = request("/mqtt", "");
    let at = bytes.len() - 2;
    bytes.splice(at..at, b"Origin: http://caf\xe9\r\n".iter().copied());
    assert_eq!(
        handshake(&bytes),
        Err(HandshakeError::Malformed {
            reason: "websocket header value is not utf-8"
        })
    );
    // A bare LF as a line end is refused.
    let bytes = b"GET /mqtt HTTP/1.1\r\nHost: b\nUpgrade: websocket\r\n\r\n";
    assert_eq!(
        handshake(bytes),
        Err(HandshakeError::Malformed {
            reason: "line ends in a bare LF"
        })
    );
}

#[test]
fn client_request_is_accepted_and_its_response_checked() {
    // RFC 6455 4.1: the client validates the 101 and Sec-WebSocket-Accept for its own key.
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let mut request_bytes = BytesMut::new();
    write_client_request("broker:8080", "/mqtt", key, &mut request_bytes);
    let upgrade = handshake(&request_bytes).unwrap();
    assert_eq!(upgrade.subprotocol, Some(Subprotocol::Mqtt));
    let mut response = BytesMut::new();
    upgrade.write_response(&mut response);
    let response_len = response.len();
    for end in 0..response_len {
        assert_eq!(parse_response(&response[..end], key), Ok(None), "at {end}");
    }
    response.extend_from_slice(&[0x82, 0x02, 0x20, 0x02]);
    assert_eq!(parse_response(&response, key), Ok(Some(response_len)));
    // Another key's accept value, a refusal, a missing subprotocol.
    assert_eq!(
        parse_response(&response, "AAAAAAAAAAAAAAAAAAAAAA=="),
        Err(ClientHandshakeError::BadAccept)
    );
    let mut refused = BytesMut::new();
    HandshakeError::PathNotFound.write_response(&mut refused);
    assert_eq!(
        parse_response(&refused, key),
        Err(ClientHandshakeError::Refused { status: 404 })
    );
    let without_protocol = String::from_utf8(response[..response_len].to_vec())
        .unwrap()
        .replace("Sec-WebSocket-Protocol: mqtt\r\n", "");
    assert_eq!(
        parse_response(without_protocol.as_bytes(), key),
        Err(ClientHandshakeError::BadSubprotocol)
    );
}

#[test]
fn client_side_decoder_reads_server_frames() {
    // RFC 6455 5.1: "A client MUST close a connection if it detects a masked frame."
    let mut input = BytesMut::new();
    encode_binary(&[0x20, 0x02], &mut input);
    encode_pong(b"p", &mut input);
    encode_binary(&[0x00, 0x00], &mut input);
    let mut decoder = FrameDecoder::new_client_side(1024);
    let mut mqtt = BytesMut::new();
    let events = decode_events(&mut decoder, &mut input, &mut mqtt).unwrap();
    assert_eq!(events, vec![Decoded::Pong(bytes::Bytes::from_static(b"p"))]);
    assert_eq!(&mqtt[..], &[0x20, 0x02, 0x00, 0x00]);
    let mut masked = BytesMut::from(&client_frame(true, opcode::BINARY, b"x")[..]);
    assert_eq!(
        decoder.decode(&mut masked, &mut mqtt),
        Err(FrameError::Masked)
    );
    assert_eq!(FrameError::Masked.close_code(), CloseCode::PROTOCOL_ERROR);
}
