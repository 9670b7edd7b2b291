//! RFC 6455 §5.2 frame headers: parsing, encoding and masking, over plain byte slices.
//!
//! Contract: [`parse_header`] either returns a complete, validated header and its length,
//! `Ok(None)` when more bytes are needed ("incomplete" is not "invalid"), or the violation
//! that the caller must answer with a close frame. Nothing here allocates or does I/O.

/// Opcode of a continuation frame (RFC 6455 §5.2).
pub const OP_CONTINUATION: u8 = 0x0;
/// Opcode of a text frame.
pub const OP_TEXT: u8 = 0x1;
/// Opcode of a binary frame: one Ethernet frame per message in our protocol.
pub const OP_BINARY: u8 = 0x2;
/// Opcode of a close frame (RFC 6455 §5.5.1).
pub const OP_CLOSE: u8 = 0x8;
/// Opcode of a ping frame (RFC 6455 §5.5.2).
pub const OP_PING: u8 = 0x9;
/// Opcode of a pong frame (RFC 6455 §5.5.3).
pub const OP_PONG: u8 = 0xA;

/// Largest header: 2 bytes + 8 bytes extended length + 4 bytes mask.
pub const MAX_HEADER_LEN: usize = 14;
/// Largest header a server (unmasked) frame can need; headroom in front of TAP reads.
pub const MAX_SERVER_HEADER_LEN: usize = 10;
/// RFC 6455 §5.5: control frames carry at most 125 bytes of payload.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN bit: this frame ends its message.
    pub fin: bool,
    /// One of the `OP_*` constants (reserved opcodes are rejected during parsing).
    pub opcode: u8,
    /// Masking key, present on every client-to-server frame (RFC 6455 §5.3).
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub payload_len: u64,
}

impl FrameHeader {
    /// Whether this is a control frame (close, ping, pong): opcodes 0x8–0xF.
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// Why a frame header is not acceptable. Each maps to a close code (RFC 6455 §7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// client frame is not masked (RFC 6455 §5.1)
    #[error("client frame is not masked (RFC 6455 §5.1)")]
    Unmasked,
    /// RSV bits set without a negotiated extension (RFC 6455 §5.2)
    #[error("RSV bits set without a negotiated extension")]
    ReservedBits,
    /// opcode 0x3–0x7 or 0xB–0xF (RFC 6455 §5.2)
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// length not in the shortest form (RFC 6455 §5.2: "the minimal number of bytes MUST be used")
    #[error("payload length not encoded in its minimal form")]
    NonMinimalLength,
    /// 64-bit length with the most significant bit set (RFC 6455 §5.2)
    #[error("64-bit payload length has its top bit set")]
    LengthTopBit,
    /// control frame longer than 125 bytes (RFC 6455 §5.5)
    #[error("control frame payload longer than 125 bytes")]
    ControlTooLong,
    /// control frame without FIN (RFC 6455 §5.5)
    #[error("fragmented control frame")]
    ControlFragmented,
}

/// Parses a frame header at the start of `buf`.
///
/// `require_mask` is true for frames a server receives (clients must mask) and false for
/// frames a client receives (servers must not mask; we accept either there).
/// Returns `Ok(None)` while `buf` is too short to hold the whole header.
pub fn parse_header(
    buf: &[u8],
    require_mask: bool,
) -> Result<Option<(FrameHeader, usize)>, HeaderError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x70 != 0 {
        return Err(HeaderError::ReservedBits);
    }
    let opcode = b0 & 0x0F;
    let fin = b0 & 0x80 != 0;
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
        other => return Err(HeaderError::ReservedOpcode(other)),
    }
    let masked = b1 & 0x80 != 0;
    if require_mask && !masked {
        return Err(HeaderError::Unmasked);
    }
    let len7 = b1 & 0x7F;
    let control = opcode & 0x8 != 0;
    if control && !fin {
        return Err(HeaderError::ControlFragmented);
    }
    if control && len7 > 125 {
        return Err(HeaderError::ControlTooLong);
    }
    let (payload_len, mut at) = match len7 {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            let len = u64::from(u16::from_be_bytes([buf[2], buf[3]]));
            if len < 126 {
                return Err(HeaderError::NonMinimalLength);
            }
            (len, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(raw);
            if len >> 63 != 0 {
                return Err(HeaderError::LengthTopBit);
            }
            if len <= 0xFFFF {
                return Err(HeaderError::NonMinimalLength);
            }
            (len, 10)
        }
        short => (u64::from(short), 2),
    };
    let mask = if masked {
        if buf.len() < at + 4 {
            return Ok(None);
        }
        let key = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        at += 4;
        Some(key)
    } else {
        None
    };
    Ok(Some((
        FrameHeader {
            fin,
            opcode,
            mask,
            payload_len,
        },
        at,
    )))
}

/// Length of the header [`encode_header`] writes for this payload length and masking.
pub fn header_len(payload_len: usize, masked: bool) -> usize {
    let base = if payload_len < 126 {
        2
    } else if payload_len <= 0xFFFF {
        4
    } else {
        10
    };
    base + if masked { 4 } else { 0 }
}

/// Writes a frame header into `out` (at least [`header_len`] bytes) and returns its length.
/// Always uses the minimal length encoding.
pub fn encode_header(
    out: &mut [u8],
    fin: bool,
    opcode: u8,
    payload_len: usize,
    mask: Option<[u8; 4]>,
) -> usize {
    out[0] = if fin { 0x80 } else { 0 } | (opcode & 0x0F);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut at = if payload_len < 126 {
        // Lossless: checked just above.
        out[1] = mask_bit | payload_len as u8;
        2
    } else if let Ok(len16) = u16::try_from(payload_len) {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&len16.to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    };
    if let Some(key) = mask {
        out[at..at + 4].copy_from_slice(&key);
        at += 4;
    }
    at
}

/// XORs `data` with the masking key (RFC 6455 §5.3), where `data[0]` is payload byte number
/// `offset` of its frame. Masking and unmasking are the same operation; works in place.
pub fn apply_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
    let mut rotated = [0u8; 4];
    for (i, byte) in rotated.iter_mut().enumerate() {
        *byte = key[(offset + i) % 4];
    }
    let word = u32::from_ne_bytes(rotated);
    let wide = u64::from(word) | (u64::from(word) << 32);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(raw) ^ wide).to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= rotated[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_masked_binary() {
        let buf = [0x82, 0x85, 1, 2, 3, 4, 0xAA];
        let (h, n) = parse_header(&buf, true).unwrap().unwrap();
        assert_eq!(n, 6);
        assert_eq!(
            h,
            FrameHeader {
                fin: true,
                opcode: OP_BINARY,
                mask: Some([1, 2, 3, 4]),
                payload_len: 5
            }
        );
    }

    #[test]
    fn incomplete_at_every_prefix() {
        let mut buf = [0u8; 14];
        let n = encode_header(&mut buf, true, OP_BINARY, 70_000, Some([9, 8, 7, 6]));
        assert_eq!(n, 14);
        for cut in 0..n {
            assert_eq!(parse_header(&buf[..cut], true), Ok(None), "cut {cut}");
        }
        assert!(parse_header(&buf[..n], true).unwrap().is_some());
    }

    #[test]
    fn violations() {
        assert_eq!(
            parse_header(&[0x82, 0x05], true),
            Err(HeaderError::Unmasked)
        );
        assert_eq!(
            parse_header(&[0xC2, 0x80], true),
            Err(HeaderError::ReservedBits)
        );
        assert_eq!(
            parse_header(&[0x83, 0x80], true),
            Err(HeaderError::ReservedOpcode(3))
        );
        assert_eq!(
            parse_header(&[0x89, 0xFE, 0, 200], true),
            Err(HeaderError::ControlTooLong)
        );
        assert_eq!(
            parse_header(&[0x09, 0x80], true),
            Err(HeaderError::ControlFragmented)
        );
        assert_eq!(
            parse_header(&[0x82, 0xFE, 0, 100], true),
            Err(HeaderError::NonMinimalLength)
        );
        assert_eq!(
            parse_header(&[0x82, 0xFF, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF], true),
            Err(HeaderError::NonMinimalLength)
        );
        assert_eq!(
            parse_header(&[0x82, 0xFF, 0x80, 0, 0, 0, 0, 1, 0, 0], true),
            Err(HeaderError::LengthTopBit)
        );
    }

    #[test]
    fn mask_matches_bytewise_at_any_offset() {
        let key = [0x12, 0x34, 0x56, 0x78];
        for offset in 0..4 {
            for len in 0..40 {
                let orig: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
                let mut fast = orig.clone();
                apply_mask(&mut fast, key, offset);
                let slow: Vec<u8> = orig
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ key[(i + offset) % 4])
                    .collect();
                assert_eq!(fast, slow);
            }
        }
    }

    #[test]
    fn header_len_matches_encoding() {
        let mut buf = [0u8; 14];
        for len in [0, 125, 126, 65535, 65536, 100_000] {
            for mask in [None, Some([1, 2, 3, 4])] {
                assert_eq!(
                    encode_header(&mut buf, true, OP_BINARY, len, mask),
                    header_len(len, mask.is_some())
                );
                let (h, _) = parse_header(&buf, mask.is_some()).unwrap().unwrap();
                assert_eq!(h.payload_len, len as u64);
            }
        }
    }
}
