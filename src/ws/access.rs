//! Who may open a WebSocket: expiring tokens signed with HMAC-SHA256 in the URL's query (v86
//! can set neither headers nor subprotocols, only the URL), and the browsers' `Origin`.
//!
//! A token is `v1.EXPIRY.NETWORK.SIGNATURE`: EXPIRY in Unix seconds, NETWORK a name of up to 32
//! letters, digits, `_` or `-` (empty: the default network; see [`crate::networks`] for
//! which network a token opens), SIGNATURE the
//! HMAC-SHA256 of `v1.EXPIRY.NETWORK` under the secret, in unpadded URL-safe base64. Every
//! character is unreserved in a URL, so a token goes into `?token=` as it is. Pure: the time
//! is passed in; the signature is compared in constant time.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Longest network name in a token.
pub const MAX_NETWORK: usize = crate::networks::MAX_NAME;
/// Shortest secret accepted.
pub const MIN_SECRET: usize = 16;

/// What the relay requires of a connection; everything off by default.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// `--token-secret`: clients must present a token signed with it.
    pub secret: Option<Vec<u8>>,
    /// `--allow-origin`: a browser's `Origin` must be one of these.
    pub origins: Vec<String>,
}

/// Why a connection was refused before its upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    TokenMissing,
    TokenMalformed,
    TokenExpired,
    TokenForged,
    OriginRefused,
    /// The token names another network than the URL.
    TokenWrongNetwork,
}

impl Denied {
    /// The whole HTTP response: `401` when no usable token came, `403` when it was refused.
    pub fn response(self) -> String {
        let (status, why) = match self {
            Denied::TokenMissing => (
                "401 Unauthorized",
                "token missing: connect to a URL with ?token=… (made by `tapwire token`)",
            ),
            Denied::TokenMalformed => (
                "401 Unauthorized",
                "token malformed: it is not a token made by `tapwire token`",
            ),
            Denied::TokenExpired => ("403 Forbidden", "token expired: get a new one"),
            Denied::TokenForged => ("403 Forbidden", "token not signed with this relay's secret"),
            Denied::OriginRefused => ("403 Forbidden", "Origin not allowed (--allow-origin)"),
            Denied::TokenWrongNetwork => (
                "403 Forbidden",
                "token for another network: a token opens only the network it names (/n/NAME; no name: the default network)",
            ),
        };
        let auth = if status.starts_with("401") {
            "WWW-Authenticate: Bearer realm=\"tapwire\"\r\n"
        } else {
            ""
        };
        let body = format!("tapwire: {why}\n");
        format!(
            "HTTP/1.1 {status}\r\n{auth}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }
}

fn signature(secret: &[u8], signed: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(signed.as_bytes());
    mac
}

/// A token for `network` valid until `expires` (Unix seconds).
pub fn mint(secret: &[u8], expires: u64, network: &str) -> Result<String, String> {
    if !valid_network(network) {
        return Err(format!(
            "network name {network:?}: at most {MAX_NETWORK} letters, digits, _ or -"
        ));
    }
    let signed = format!("v1.{expires}.{network}");
    let sig = signature(secret, &signed).finalize().into_bytes();
    Ok(format!(
        "{signed}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig)
    ))
}

fn valid_network(n: &str) -> bool {
    crate::networks::name_chars(n)
}

/// The `token` parameter of a request target's query, if any.
fn token_in(target: &str) -> Option<&str> {
    let (_, query) = target.split_once('?')?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
}

/// The request target without its query (for logs: tokens are never logged).
pub fn path_only(target: &str) -> &str {
    target.split('?').next().unwrap_or(target)
}

impl Access {
    /// Whether anything is checked.
    pub fn is_open(&self) -> bool {
        self.secret.is_none() && self.origins.is_empty()
    }

    /// Checks a request for `target` with `origin` at `now` (Unix seconds): the network name
    /// of its token (empty without tokens), or why it is refused. A request without `Origin`
    /// is not a browser's and passes the Origin check (any other client could send any Origin).
    pub fn check(&self, target: &str, origin: Option<&str>, now: u64) -> Result<String, Denied> {
        if let Some(origin) = origin {
            let allowed = self.origins.is_empty()
                || self
                    .origins
                    .iter()
                    .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin.trim()));
            if !allowed {
                return Err(Denied::OriginRefused);
            }
        }
        let Some(secret) = &self.secret else {
            return Ok(String::new());
        };
        let token = token_in(target).ok_or(Denied::TokenMissing)?;
        let mut parts = token.split('.');
        let (Some("v1"), Some(expires), Some(network), Some(sig), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(Denied::TokenMalformed);
        };
        let expires: u64 = expires.parse().map_err(|_| Denied::TokenMalformed)?;
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| Denied::TokenMalformed)?;
        if !valid_network(network) || sig.len() != 32 {
            return Err(Denied::TokenMalformed);
        }
        signature(secret, &format!("v1.{expires}.{network}"))
            .verify_slice(&sig)
            .map_err(|_| Denied::TokenForged)?;
        if now >= expires {
            return Err(Denied::TokenExpired);
        }
        Ok(network.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn tokens() -> Access {
        Access {
            secret: Some(SECRET.to_vec()),
            origins: Vec::new(),
        }
    }

    #[test]
    fn a_minted_token_opens_until_it_expires() {
        let t = mint(SECRET, 1_000, "farm-7").unwrap();
        assert!(t.starts_with("v1.1000.farm-7."));
        let a = tokens();
        assert_eq!(
            a.check(&format!("/?token={t}"), None, 999),
            Ok("farm-7".into())
        );
        assert_eq!(
            a.check(&format!("/x?a=1&token={t}&b=2"), None, 0),
            Ok("farm-7".into())
        );
        assert_eq!(
            a.check(&format!("/?token={t}"), None, 1_000),
            Err(Denied::TokenExpired)
        );
        assert_eq!(
            mint(SECRET, 5, "").map(|t| t.starts_with("v1.5..")),
            Ok(true)
        );
        assert!(mint(SECRET, 5, "has space").is_err());
    }

    #[test]
    fn missing_malformed_and_forged_tokens_are_refused() {
        let a = tokens();
        let t = mint(SECRET, 1_000, "n").unwrap();
        assert_eq!(a.check("/", None, 0), Err(Denied::TokenMissing));
        assert_eq!(a.check("/?tok=x", None, 0), Err(Denied::TokenMissing));
        for bad in [
            "",
            "v1",
            "v2.1000.n.AAAA",
            "v1.x.n.AAAA",
            "v1.1000.n.!!",
            "v1.1000.n.AAAA",
            "v1.1000.n.AA.B",
        ] {
            assert_eq!(
                a.check(&format!("/?token={bad}"), None, 0),
                Err(Denied::TokenMalformed),
                "{bad}"
            );
        }
        let other = mint(b"another secret, 32 bytes long!!!", 1_000, "n").unwrap();
        assert_eq!(
            a.check(&format!("/?token={other}"), None, 0),
            Err(Denied::TokenForged)
        );
        // A later expiry or another network under the old signature.
        let (_, sig) = t.rsplit_once('.').unwrap();
        for forged in [format!("v1.9999.n.{sig}"), format!("v1.1000.m.{sig}")] {
            assert_eq!(
                a.check(&format!("/?token={forged}"), None, 0),
                Err(Denied::TokenForged)
            );
        }
        assert!(Denied::TokenMissing
            .response()
            .starts_with("HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: "));
        assert!(Denied::TokenForged
            .response()
            .starts_with("HTTP/1.1 403 Forbidden\r\n"));
    }

    /// The signature is 32 bytes in 43 base64 characters: the last one carries 4 bits of the
    /// signature and 2 bits that must be zero. Changing it gives a malformed token when those
    /// bits are set and a forged one when they are not; a change anywhere else is a forgery.
    #[test]
    fn a_changed_signature_character_is_forged_or_malformed_by_its_padding_bits() {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let a = tokens();
        let t = mint(SECRET, 1_000, "n").unwrap();
        let sig_at = t.rfind('.').unwrap() + 1;
        assert_eq!(t.len() - sig_at, 43);
        let with = |at: usize, c: u8| {
            let mut b = t.clone().into_bytes();
            b[at] = c;
            String::from_utf8(b).unwrap()
        };
        let (mut forged, mut malformed) = (0, 0);
        for (value, &c) in ALPHABET.iter().enumerate() {
            if c == t.as_bytes()[t.len() - 1] {
                continue;
            }
            let got = a.check(&format!("/?token={}", with(t.len() - 1, c)), None, 0);
            if value & 0b11 == 0 {
                assert_eq!(
                    got,
                    Err(Denied::TokenForged),
                    "last character {}",
                    c as char
                );
                forged += 1;
            } else {
                assert_eq!(
                    got,
                    Err(Denied::TokenMalformed),
                    "last character {}",
                    c as char
                );
                malformed += 1;
            }
        }
        assert_eq!((forged, malformed), (15, 48));
        // Any character of the signature but the last, changed to any other: forged.
        for at in sig_at..t.len() - 1 {
            for &c in ALPHABET.iter().filter(|&&c| c != t.as_bytes()[at]) {
                assert_eq!(
                    a.check(&format!("/?token={}", with(at, c)), None, 0),
                    Err(Denied::TokenForged)
                );
            }
        }
        // The forgery the scenarios use.
        assert_eq!(
            a.check(
                &format!("/?token={}", tapwire_testkit::token::forge(&t)),
                None,
                0
            ),
            Err(Denied::TokenForged)
        );
    }

    #[test]
    fn origins_must_match_when_given() {
        let a = Access {
            secret: None,
            origins: vec![
                "https://farm.example".into(),
                "http://127.0.0.1:8000/".into(),
            ],
        };
        assert_eq!(
            a.check("/", Some("https://farm.example"), 0),
            Ok(String::new())
        );
        assert_eq!(
            a.check("/", Some("HTTPS://FARM.EXAMPLE"), 0),
            Ok(String::new())
        );
        assert_eq!(
            a.check("/", Some("http://127.0.0.1:8000"), 0),
            Ok(String::new())
        );
        assert_eq!(
            a.check("/", Some("https://evil.example"), 0),
            Err(Denied::OriginRefused)
        );
        assert_eq!(a.check("/", Some("null"), 0), Err(Denied::OriginRefused));
        assert_eq!(a.check("/", None, 0), Ok(String::new()), "not a browser");
        assert!(Access::default().is_open());
        assert_eq!(
            Access::default().check("/", Some("https://any"), 0),
            Ok(String::new())
        );
        assert_eq!(path_only("/a/b?token=secret"), "/a/b");
    }
}
