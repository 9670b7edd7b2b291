//! Who may connect: `--token-secret` read from its file and `--allow-origin` checked for
//! form, into the engine's [`Access`] rules.

use crate::ws::access::{Access, MIN_SECRET};

use super::{ConfigError, RunArgs};

/// The secret of `--token-secret` (and `tapwire token`): the file's bytes without surrounding
/// white space, at least [`crate::ws::access::MIN_SECRET`] of them.
pub fn read_token_secret(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let raw = std::fs::read(path)
        .map_err(|e| format!("--token-secret {}: cannot read it: {e}", path.display()))?;
    let secret = raw.trim_ascii().to_vec();
    if secret.len() < MIN_SECRET {
        return Err(format!(
            "--token-secret {}: the secret is {} bytes, at least {MIN_SECRET} are needed; make one with `head -c 32 /dev/urandom | base64 > {}`",
            path.display(),
            secret.len(),
            path.display()
        ));
    }
    Ok(secret)
}

/// The token of `--admin-token FILE`: the file's text without surrounding white space, at
/// least [`MIN_SECRET`] characters.
pub fn read_admin_token(path: &std::path::Path) -> Result<String, String> {
    let raw = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "--admin-token {}: cannot read it as text: {e}",
            path.display()
        )
    })?;
    let token = raw.trim().to_string();
    if token.len() < MIN_SECRET || token.contains(char::is_whitespace) {
        return Err(format!(
            "--admin-token {}: the token must be at least {MIN_SECRET} characters without spaces; make one with `head -c 32 /dev/urandom | base64 > {}`",
            path.display(),
            path.display()
        ));
    }
    Ok(token)
}

impl RunArgs {
    /// The access rules: the token secret read from its file, the origins checked for form.
    pub(super) fn access(&self) -> Result<Access, ConfigError> {
        for o in &self.allow_origins {
            let rest = o
                .strip_prefix("https://")
                .or_else(|| o.strip_prefix("http://"))
                .unwrap_or("");
            if rest.trim_end_matches('/').is_empty() || rest.trim_end_matches('/').contains('/') {
                return Err(ConfigError::Access(format!(
                    "--allow-origin {o:?}: an origin is scheme://host[:port], e.g. https://farm.example"
                )));
            }
        }
        let secret = match &self.token_secret {
            None => None,
            Some(path) => Some(read_token_secret(path).map_err(ConfigError::Access)?),
        };
        Ok(Access {
            secret,
            origins: self.allow_origins.clone(),
        })
    }
}
