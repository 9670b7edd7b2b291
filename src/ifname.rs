//! Interface names, by the kernel's own rule (`dev_valid_name` in net/core/dev.c): 1 to 15
//! bytes (`IFNAMSIZ` less the NUL), not `.` or `..`, and no `/`, `:`, whitespace or NUL.
//! The one place this rule lives: options, the TAP ioctls and the ledger all go through
//! [`IfName`].

use std::fmt;
use std::str::FromStr;

/// Linux limits interface names to 15 bytes plus the NUL (`IFNAMSIZ`).
pub const MAX_IFNAME_LEN: usize = 15;

/// A valid interface name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfName(String);

/// Why a string is not an interface name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not an interface name: {why}")]
pub struct BadIfName {
    pub name: String,
    pub why: &'static str,
}

impl FromStr for IfName {
    type Err = BadIfName;

    fn from_str(name: &str) -> Result<Self, BadIfName> {
        let bad = |why| {
            Err(BadIfName {
                name: name.to_string(),
                why,
            })
        };
        if name.is_empty() {
            return bad("it is empty");
        }
        if name.len() > MAX_IFNAME_LEN {
            return bad("it is longer than 15 bytes");
        }
        if name == "." || name == ".." {
            return bad("`.` and `..` are reserved");
        }
        if name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
        {
            return bad("it contains '/', ':', a space or a NUL");
        }
        Ok(IfName(name.to_string()))
    }
}

impl IfName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for IfName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::path::Path> for IfName {
    fn as_ref(&self) -> &std::path::Path {
        self.0.as_ref()
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_rule() {
        for ok in ["tapwire0", "a", "br-x_1.2", "abcdefghijklmno"] {
            assert_eq!(ok.parse::<IfName>().unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "abcdefghijklmnop",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "a\0b",
        ] {
            assert!(bad.parse::<IfName>().is_err(), "{bad:?}");
        }
        let e = "eth0:1".parse::<IfName>().unwrap_err();
        assert!(e.to_string().contains("':'"), "{e}");
    }
}
