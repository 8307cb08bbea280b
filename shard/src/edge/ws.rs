//! WebSocket (RFC 6455) for `ws` and `wss` listeners with `wire::ws`: the HTTP upgrade (path,
//! subprotocol `mqtt` or `mqttv3.1`), then binary frames whose payloads are the MQTT byte stream
//! (packets may span frames or share one [MQTT-6.0.0-2]), pings answered, a close echoed. The
//! stage holds no buffer between messages: only a partial frame header or control frame, or
//! an unfinished upgrade request (at most `wire::ws::REQUEST_LEN_MAX`), waits in `pending`.

use bytes::BytesMut;
use wire::ws::{Decoded, FrameDecoder, HandshakeConfig, RequestFraming};

use super::{Failure, Listener};

/// Bound on one WebSocket message: the largest MQTT packet plus its fixed header, since a
/// client may send any packet as one message (MQTT's own bound applies on top).
pub const WS_MESSAGE_LEN_MAX: u32 = 268_435_455 + 5;

/// What the stage tells the layer after a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsOutcome {
    Open,
    /// The peer sent a close frame (answered in the reply): close the connection.
    Closing,
}

#[derive(Debug)]
pub struct WsStage {
    upgraded: bool,
    /// Bytes of the upgrade request already searched for its end.
    scanned_len: usize,
    decoder: FrameDecoder,
    /// The unfinished request, or a partial frame header / control frame; empty (no
    /// allocation) between messages.
    pending: BytesMut,
}

impl WsStage {
    pub fn new() -> Self {
        WsStage {
            upgraded: false,
            scanned_len: 0,
            decoder: FrameDecoder::new(WS_MESSAGE_LEN_MAX),
            pending: BytesMut::new(),
        }
    }

    pub fn upgraded(&self) -> bool {
        self.upgraded
    }

    /// Feeds bytes from the socket (or TLS). MQTT bytes go to `mqtt`; the HTTP response, pongs
    /// and the close echo go to `reply` (plaintext, for the TLS stage to encrypt).
    pub fn feed(
        &mut self,
        data: &[u8],
        spec: &Listener,
        work: &mut BytesMut,
        mqtt: &mut BytesMut,
        reply: &mut BytesMut,
    ) -> Result<WsOutcome, Failure> {
        work.clear();
        work.extend_from_slice(&self.pending);
        work.extend_from_slice(data);
        self.pending = BytesMut::new();
        if !self.upgraded && !self.upgrade(work, spec, reply)? {
            return Ok(WsOutcome::Open);
        }
        let outcome = self.frames(work, mqtt, reply)?;
        if !work.is_empty() {
            self.pending = BytesMut::from(&work[..]);
        }
        Ok(outcome)
    }

    /// Reads the upgrade request from the front of `work`. True once upgraded (the request is
    /// gone from `work`, frames may follow).
    fn upgrade(
        &mut self,
        work: &mut BytesMut,
        spec: &Listener,
        reply: &mut BytesMut,
    ) -> Result<bool, Failure> {
        let framing = wire::ws::check_request(work, self.scanned_len);
        let request_len = match framing {
            Ok(RequestFraming::Incomplete { scanned_len }) => {
                self.scanned_len = scanned_len;
                self.pending = BytesMut::from(&work[..]);
                work.clear();
                return Ok(false);
            }
            Ok(RequestFraming::Complete { request_len }) => request_len,
            Err(err) => {
                err.write_response(reply);
                return Err(Failure::WsRequest);
            }
        };
        let path = spec.ws_path.as_deref().unwrap_or(super::WS_PATH_DEFAULT);
        match wire::ws::parse_request(&work[..request_len], &HandshakeConfig { path }) {
            Ok(request) => request.write_response(reply),
            Err(err) => {
                tracing::debug!(error = %err, "websocket upgrade refused");
                err.write_response(reply);
                return Err(Failure::WsRequest);
            }
        }
        let _ = work.split_to(request_len);
        self.upgraded = true;
        Ok(true)
    }

    fn frames(
        &mut self,
        work: &mut BytesMut,
        mqtt: &mut BytesMut,
        reply: &mut BytesMut,
    ) -> Result<WsOutcome, Failure> {
        loop {
            match self.decoder.decode(work, mqtt) {
                Ok(Decoded::NeedMore { .. }) => return Ok(WsOutcome::Open),
                Ok(Decoded::Ping(payload)) => wire::ws::encode_pong(&payload, reply),
                Ok(Decoded::Pong(_)) => {}
                Ok(Decoded::Close { code, .. }) => {
                    // RFC 6455 5.5.1: echo the status code, then close.
                    wire::ws::encode_close(code, "", reply);
                    work.clear();
                    return Ok(WsOutcome::Closing);
                }
                Err(err) => {
                    tracing::debug!(error = %err, "websocket frame refused");
                    wire::ws::encode_close(Some(err.close_code()), "", reply);
                    return Err(Failure::WsFrame);
                }
            }
        }
    }
}

impl Default for WsStage {
    fn default() -> Self {
        Self::new()
    }
}
