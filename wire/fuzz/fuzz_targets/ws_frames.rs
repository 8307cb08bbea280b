//! The WebSocket codec on arbitrary bytes: the frame decoder (whole, and in two pieces cut
//! where the first byte says, with the same verdict) and the opening handshake parser.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ringmq_wire::ws::{
    check_request, decode_all, parse_request, Decoded, FrameDecoder, HandshakeConfig,
    RequestFraming,
};

/// Small enough that the 1009 path is exercised too.
const FUZZ_MESSAGE_LEN_MAX: u32 = 4096;

fuzz_target!(|input: &[u8]| {
    let Some((&cut, data)) = input.split_first() else {
        return;
    };
    let (whole_mqtt, _, whole_error) = decode_all(data, FUZZ_MESSAGE_LEN_MAX);

    let cut = usize::from(cut) % (data.len() + 1);
    let mut decoder = FrameDecoder::new(FUZZ_MESSAGE_LEN_MAX);
    let (mut pending, mut mqtt) = (BytesMut::new(), BytesMut::new());
    let mut error = None;
    'feed: for piece in [&data[..cut], &data[cut..]] {
        pending.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut pending, &mut mqtt) {
                Ok(Decoded::NeedMore { needed_at_least }) => {
                    assert!(needed_at_least > pending.len());
                    break;
                }
                Ok(Decoded::Close { .. }) => break 'feed,
                Ok(_) => {}
                Err(e) => {
                    error = Some(e);
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(&mqtt[..], &whole_mqtt[..]);
    assert_eq!(error, whole_error);

    let config = HandshakeConfig { path: "/mqtt" };
    if let Ok(RequestFraming::Complete { request_len }) = check_request(data, 0) {
        let _ = parse_request(&data[..request_len], &config);
    }
});
