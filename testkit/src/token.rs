//! Access tokens as tests need them: a forgery that is always a forgery.

/// `token` with one character in the middle of its signature changed. The signature's last
/// base64 character also carries two bits that must be zero, so changing that one may make
/// the token malformed instead of forged; a character in the middle is always a forgery.
pub fn forge(token: &str) -> String {
    let sig_at = token.rfind('.').map_or(0, |i| i + 1);
    let at = sig_at + (token.len() - sig_at) / 2;
    let mut bytes = token.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("a token is ASCII")
}
