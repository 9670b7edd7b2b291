//! The HTTP/1.1 upgrade that opens a WebSocket (RFC 6455 §4.2), parsed with `httparse`.
//!
//! Contract: [`parse_upgrade`] looks at the bytes received so far and says whether the head is
//! incomplete, acceptable (with the `101` response to send and how many bytes it used), or
//! rejected (with the status line and a one-line reason to send before closing). It never
//! negotiates an extension (`permessage-deflate` is declined by omission) or a subprotocol.

use base64::Engine as _;

/// Largest request head we read before answering `431`.
pub const MAX_HEAD_LEN: usize = 8 * 1024;
/// Header slots offered to httparse; more headers than this is answered `431` too.
const MAX_HEADERS: usize = 64;
/// RFC 6455 §1.3: the GUID appended to the client's key.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why an upgrade request was refused; each maps to a status and a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Not an HTTP request at all, or not a GET, or missing the key: `400`.
    BadRequest(&'static str),
    /// A valid HTTP request that does not ask for a WebSocket, or asks for a version ≠ 13: `426`.
    UpgradeRequired(&'static str),
    /// The head is larger than [`MAX_HEAD_LEN`]: `431`.
    HeadTooLarge,
}

impl Rejection {
    /// The full HTTP response to send before closing the socket.
    pub fn response(&self) -> String {
        let (status, reason, extra) = match self {
            Rejection::BadRequest(why) => ("400 Bad Request", *why, ""),
            Rejection::UpgradeRequired(why) => (
                "426 Upgrade Required",
                *why,
                "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
            ),
            Rejection::HeadTooLarge => (
                "431 Request Header Fields Too Large",
                "request head larger than 8 KiB",
                "",
            ),
        };
        let body = format!("tapwire: {reason}\n");
        format!(
            "HTTP/1.1 {status}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }
}

/// Result of looking at the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upgrade {
    /// Need more bytes.
    Incomplete,
    /// A valid upgrade: send `response`; the head used `head_len` bytes (frames may follow).
    Accept {
        response: String,
        head_len: usize,
        path: String,
        /// The `Origin` header (browsers send it), for `--allow-origin`.
        origin: Option<String>,
        /// Every `X-Forwarded-For` header's value, in order, joined by commas (believed only
        /// from a `--trusted-proxy`: [`super::forwarded`]).
        forwarded_for: Option<String>,
    },
    /// Refuse with this response, then close.
    Reject(Rejection),
}

/// The `Sec-WebSocket-Accept` value for a client key (RFC 6455 §4.2.2).
pub fn accept_key(client_key: &[u8]) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(client_key);
    sha.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|b| *b == b',')
        .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Parses the request head in `buf` (everything received so far on the connection).
pub fn parse_upgrade(buf: &[u8]) -> Upgrade {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= MAX_HEAD_LEN {
                return Upgrade::Reject(Rejection::HeadTooLarge);
            }
            return Upgrade::Incomplete;
        }
        Err(httparse::Error::TooManyHeaders) => return Upgrade::Reject(Rejection::HeadTooLarge),
        Err(_) => return Upgrade::Reject(Rejection::BadRequest("not an HTTP/1.1 request")),
    };
    if head_len > MAX_HEAD_LEN {
        return Upgrade::Reject(Rejection::HeadTooLarge);
    }
    if req.method != Some("GET") {
        return Upgrade::Reject(Rejection::BadRequest("a WebSocket upgrade must use GET"));
    }
    if req.version != Some(1) {
        return Upgrade::Reject(Rejection::BadRequest("a WebSocket upgrade needs HTTP/1.1"));
    }
    let find = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let upgrade_ok = find("upgrade").is_some_and(|v| has_token(v, "websocket"));
    let connection_ok = find("connection").is_some_and(|v| has_token(v, "upgrade"));
    if !upgrade_ok || !connection_ok {
        return Upgrade::Reject(Rejection::UpgradeRequired(
            "this is a WebSocket endpoint: send an Upgrade: websocket request",
        ));
    }
    if find("sec-websocket-version").map(|v| v.trim_ascii()) != Some(b"13") {
        return Upgrade::Reject(Rejection::UpgradeRequired(
            "only WebSocket version 13 is supported",
        ));
    }
    let Some(key) = find("sec-websocket-key").map(|v| v.trim_ascii()) else {
        return Upgrade::Reject(Rejection::BadRequest("missing Sec-WebSocket-Key"));
    };
    let key_ok = base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|raw| raw.len() == 16);
    if !key_ok {
        return Upgrade::Reject(Rejection::BadRequest(
            "Sec-WebSocket-Key is not 16 bytes in base64",
        ));
    }
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    );
    Upgrade::Accept {
        response,
        head_len,
        path: req.path.unwrap_or("/").to_string(),
        origin: find("origin").map(|v| String::from_utf8_lossy(v).into_owned()),
        forwarded_for: forwarded_for(req.headers),
    }
}

/// Every `X-Forwarded-For` value of a request, in order, joined by commas; `None` without one.
fn forwarded_for(headers: &[httparse::Header<'_>]) -> Option<String> {
    let mut joined: Option<String> = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
    {
        let value = String::from_utf8_lossy(h.value);
        match &mut joined {
            None => joined = Some(value.into_owned()),
            Some(list) => {
                list.push(',');
                list.push_str(&value);
            }
        }
    }
    joined
}

/// The `503` sent to a connection beyond `--max-clients`, before any upgrade.
pub fn too_many_clients_response() -> String {
    let body = "tapwire: too many clients (--max-clients reached); try again later\n";
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nRetry-After: 10\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE_STYLE: &[u8] = b"GET /some/path?x=1 HTTP/1.1\r\nhost: 127.0.0.1:8086\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

    #[test]
    fn rfc_sample_key() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn lower_case_headers_accepted_and_deflate_declined() {
        match parse_upgrade(NODE_STYLE) {
            Upgrade::Accept {
                response,
                head_len,
                path,
                origin,
                forwarded_for,
            } => {
                assert_eq!(head_len, NODE_STYLE.len());
                assert_eq!(forwarded_for, None);
                assert_eq!(path, "/some/path?x=1");
                assert_eq!(origin, None, "Node's ws sends no Origin");
                assert!(response.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
                assert!(!response.to_ascii_lowercase().contains("extensions"));
                assert!(!response.to_ascii_lowercase().contains("protocol:"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn forwarded_for_headers_are_joined_in_order() {
        let head = b"GET /n/a HTTP/1.1\r\nX-Forwarded-For: 198.51.100.1, 10.0.0.3\r\nupgrade: websocket\r\nconnection: Upgrade\r\nx-forwarded-for: 10.0.0.2\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        match parse_upgrade(head) {
            Upgrade::Accept { forwarded_for, .. } => assert_eq!(
                forwarded_for.as_deref(),
                Some("198.51.100.1, 10.0.0.3,10.0.0.2")
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn incomplete_at_every_prefix() {
        for cut in 0..NODE_STYLE.len() {
            assert_eq!(
                parse_upgrade(&NODE_STYLE[..cut]),
                Upgrade::Incomplete,
                "cut {cut}"
            );
        }
    }

    #[test]
    fn rejections() {
        let plain = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(matches!(
            parse_upgrade(plain),
            Upgrade::Reject(Rejection::UpgradeRequired(_))
        ));
        let post = b"POST / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
        assert!(matches!(
            parse_upgrade(post),
            Upgrade::Reject(Rejection::BadRequest(_))
        ));
        let v8 = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let rej = parse_upgrade(v8);
        assert!(matches!(
            rej,
            Upgrade::Reject(Rejection::UpgradeRequired(_))
        ));
        let nokey = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n";
        assert!(matches!(
            parse_upgrade(nokey),
            Upgrade::Reject(Rejection::BadRequest(_))
        ));
        assert!(matches!(
            parse_upgrade(b"\x16\x03\x01garbage\r\n\r\n"),
            Upgrade::Reject(Rejection::BadRequest(_))
        ));
        let big = vec![b'a'; MAX_HEAD_LEN];
        assert_eq!(
            parse_upgrade(&big),
            Upgrade::Reject(Rejection::HeadTooLarge)
        );
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_HEAD_LEN));
        assert_eq!(
            parse_upgrade(&long),
            Upgrade::Reject(Rejection::HeadTooLarge)
        );
    }

    #[test]
    fn rejection_responses_are_one_line_http() {
        for r in [
            Rejection::BadRequest("x"),
            Rejection::UpgradeRequired("y"),
            Rejection::HeadTooLarge,
        ] {
            let text = r.response();
            assert!(text.starts_with("HTTP/1.1 4"));
            assert!(text.ends_with("\n") && text.contains("\r\n\r\ntapwire: "));
        }
    }
}
