//! user_data encoding: (op kind, generation, index) packed into the SQE's 64-bit user_data.
//!
//! Bits 0..32 hold the connection slot (or listener index), bits 32..56 the low 24 bits of the
//! slot's generation, bits 56..64 the op kind. Completions whose generation does not match the
//! slot's current one belong to a previous occupant and are ignored.

/// Bits of the generation carried in user_data.
pub(crate) const GENERATION_BITS: u32 = 24;
const GENERATION_MASK: u32 = (1 << GENERATION_BITS) - 1;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum OpKind {
    /// Multishot accept on a listener (index = listener).
    Accept = 1,
    /// Delay before re-arming a failed accept (index = listener).
    AcceptRetry = 2,
    /// Multishot receive (index = slot).
    Recv = 3,
    /// The one send/sendmsg in flight of a connection (index = slot).
    Send = 4,
    /// An async cancel; its own completion carries nothing we need.
    Cancel = 5,
    /// The close/detach linger bound of a connection (index = slot).
    Linger = 6,
    /// A wake-up another ring sent this one with IORING_OP_MSG_RING (index = the sender's id).
    Kick = 7,
    /// Our own MSG_RING op to another ring (index = the target's id); only failures complete.
    KickSent = 8,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Token {
    pub kind: OpKind,
    pub index: u32,
    pub generation: u32,
}

impl Token {
    pub(crate) fn new(kind: OpKind, index: u32, generation: u32) -> Token {
        Token {
            kind,
            index,
            generation: generation & GENERATION_MASK,
        }
    }

    pub(crate) fn encode(self) -> u64 {
        (self.kind as u64) << 56 | (self.generation as u64) << 32 | self.index as u64
    }

    /// `None` for user_data we never produced (the kernel echoes ours, so this is defensive).
    pub(crate) fn decode(user_data: u64) -> Option<Token> {
        let kind = match (user_data >> 56) as u8 {
            1 => OpKind::Accept,
            2 => OpKind::AcceptRetry,
            3 => OpKind::Recv,
            4 => OpKind::Send,
            5 => OpKind::Cancel,
            6 => OpKind::Linger,
            7 => OpKind::Kick,
            8 => OpKind::KickSent,
            _ => return None,
        };
        Some(Token {
            kind,
            index: user_data as u32,
            generation: (user_data >> 32) as u32 & GENERATION_MASK,
        })
    }

    /// Whether this token belongs to the slot occupant with `generation`.
    pub(crate) fn matches(self, generation: u32) -> bool {
        self.generation == generation & GENERATION_MASK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        for kind in [
            OpKind::Accept,
            OpKind::AcceptRetry,
            OpKind::Recv,
            OpKind::Send,
            OpKind::Cancel,
            OpKind::Linger,
        ] {
            let t = Token::new(kind, u32::MAX - 3, 0xfff_ffff);
            assert_eq!(Token::decode(t.encode()), Some(t));
            assert!(t.matches(0xfff_ffff));
            assert!(!t.matches(0xfff_fffe));
        }
        assert_eq!(Token::decode(0), None);
    }
}
