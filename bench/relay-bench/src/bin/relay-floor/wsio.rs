//! The WebSocket side shared by `relay-floor` and `relay-bridge`: the upgrade and the
//! parsing of client frames, unmasked in place.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use tapwire::ws::frame::{self, apply_mask, parse_header};
use tapwire::ws::handshake::{parse_upgrade, Upgrade};

/// Reads the request head and answers `101`; the bytes after the head.
pub fn upgrade(conn: &mut TcpStream) -> Option<Vec<u8>> {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf).ok().filter(|n| *n > 0)?;
        head.extend_from_slice(&buf[..n]);
        match parse_upgrade(&head) {
            Upgrade::Incomplete => continue,
            Upgrade::Accept {
                response, head_len, ..
            } => {
                conn.write_all(response.as_bytes()).ok()?;
                return Some(head[head_len..].to_vec());
            }
            Upgrade::Reject(r) => {
                let _ = conn.write_all(r.response().as_bytes());
                return None;
            }
        }
    }
}

/// Parses the complete client frames at the start of `data`, unmasks each in place and hands
/// each binary payload to `emit`. Returns the bytes used and false when the stream must end
/// (a close frame or a malformed header).
pub fn frames(
    data: &mut [u8],
    mut emit: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<(usize, bool), String> {
    let mut pos = 0;
    loop {
        let (header, at) = match parse_header(&data[pos..], true) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok((pos, true)),
            Err(_) => return Ok((pos, false)),
        };
        let len = header.payload_len as usize;
        if data.len() - pos < at + len {
            return Ok((pos, true));
        }
        let payload = &mut data[pos + at..pos + at + len];
        if let Some(key) = header.mask {
            apply_mask(payload, key, 0);
        }
        pos += at + len;
        match header.opcode {
            frame::OP_BINARY if header.fin => emit(payload)?,
            frame::OP_CLOSE => return Ok((pos, false)),
            _ => {}
        }
    }
}
