//! Who is calling: bearer tokens from the operator's tokens file, or JWT
//! access tokens of an authorization server ([`super::jwt`]), checked
//! before any MCP message is read.
//!
//! Owns the tokens file (`MCP_BRIDGE_HTTP_TOKENS_FILE`: one
//! `name:sha256-hex-of-token` line per principal), its reload (on change,
//! looked at every [`RELOAD_EVERY`], and on SIGHUP; a file that no longer
//! reads serves nobody until it is mended), the constant-time check of a
//! presented token against every hash, and the 401 answer the MCP
//! authorization spec asks for (`WWW-Authenticate: Bearer
//! resource_metadata="…"`). Tokens are never logged, stored or passed on:
//! only their SHA-256 is compared, and the `Authorization` header is taken
//! off the request once checked. It knows nothing of MCP.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::jwt::JwtVerifier;
use crate::principals::Principal;

/// How often the tokens file is looked at for a change.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);
/// Names a tokens-file line cannot take: the principal of a listener
/// without tokens, and the metric labels of JWT principals and of refusals.
const RESERVED: [&str; 3] = [Principal::LOCAL, "jwt", "unauthenticated"];
/// The largest tokens file read (a line is ~100 bytes: thousands of principals).
pub const MAX_TOKENS_FILE: u64 = 1 << 20;

/// Why the tokens file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("cannot read MCP_BRIDGE_HTTP_TOKENS_FILE {}: {error}", .path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "MCP_BRIDGE_HTTP_TOKENS_FILE {} is over {} KiB", .path.display(), MAX_TOKENS_FILE >> 10
    )]
    TooLarge { path: PathBuf },
    #[error(
        "MCP_BRIDGE_HTTP_TOKENS_FILE {} line {line}: {reason} (each line is \
         name:sha256-hex-of-token; make one with: printf %s \"$TOKEN\" | sha256sum)",
        .path.display()
    )]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("MCP_BRIDGE_HTTP_TOKENS_FILE {} names no principal", .path.display())]
    Empty { path: PathBuf },
}

/// The principals of a tokens file and their tokens' SHA-256.
#[derive(Debug, Default, Clone)]
struct Table {
    entries: Vec<(Principal, [u8; 32])>,
}

impl Table {
    /// Reads `name:hex` lines; blank lines and `#` comments are skipped.
    fn parse(path: &Path, text: &str) -> Result<Self, TokensError> {
        let line_error = |line: usize, reason: String| TokensError::Line {
            path: path.to_owned(),
            line,
            reason,
        };
        let mut entries: Vec<(Principal, [u8; 32])> = Vec::new();
        for (at, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let number = at + 1;
            let Some((name, hash)) = line.split_once(':') else {
                return Err(line_error(number, "no ':' between name and hash".into()));
            };
            let principal = Principal::new(name.trim()).map_err(|e| line_error(number, e))?;
            if RESERVED.contains(&principal.as_str()) {
                return Err(line_error(
                    number,
                    format!("{principal} is reserved (it names other clients in logs and metrics)"),
                ));
            }
            let mut digest = [0u8; 32];
            hex::decode_to_slice(hash.trim(), &mut digest)
                .map_err(|_| line_error(number, "the hash is not 64 hexadecimal digits".into()))?;
            if entries.iter().any(|(p, _)| *p == principal) {
                return Err(line_error(number, format!("{principal} is named twice")));
            }
            entries.push((principal, digest));
        }
        if entries.is_empty() {
            return Err(TokensError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Self { entries })
    }

    /// The principal whose token this is. Every hash is compared, in
    /// constant time, whatever matches: the time taken tells nothing of
    /// which hash, or how much of one, matched.
    fn principal_of(&self, token: &str) -> Option<Principal> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (principal, hash) in &self.entries {
            if bool::from(hash.ct_eq(&digest)) {
                found = Some(principal.clone());
            }
        }
        found
    }
}

/// How requests are authenticated.
#[derive(Debug, Clone)]
pub enum Auth {
    /// No tokens file, no issuer (loopback only): every request is
    /// [`Principal::local`].
    Local,
    /// Bearer tokens: of the tokens file, JWTs of the issuer, or either.
    Bearer {
        tokens: Option<Arc<TokensFile>>,
        jwt: Option<Arc<JwtVerifier>>,
    },
}

/// The tokens file, as last read.
#[derive(Debug)]
pub struct TokensFile {
    path: PathBuf,
    /// `None`: the file no longer reads; nobody is served until it is mended.
    table: RwLock<Option<Table>>,
    /// The modification time and length last read, to see a change.
    stamp: RwLock<Option<(SystemTime, u64)>>,
}

impl TokensFile {
    /// Reads the file: an error here refuses to start.
    pub fn open(path: &Path) -> Result<Arc<Self>, TokensError> {
        let (table, stamp) = read(path)?;
        Ok(Arc::new(Self {
            path: path.to_owned(),
            table: RwLock::new(Some(table)),
            stamp: RwLock::new(stamp),
        }))
    }

    /// Reads the file again; a file that no longer reads serves nobody.
    pub fn reload(&self) {
        let (table, stamp) = match read(&self.path) {
            Ok((table, stamp)) => {
                tracing::info!(
                    path = %self.path.display(),
                    principals = table.entries.len(),
                    "tokens file read"
                );
                (Some(table), stamp)
            }
            Err(error) => {
                tracing::error!(%error, "tokens file unusable: every request is refused until it is mended");
                (None, stamp_of(&self.path))
            }
        };
        *self.table.write().expect("never poisoned") = table;
        *self.stamp.write().expect("never poisoned") = stamp;
    }

    /// Reloads if the file changed since it was last read.
    fn reload_if_changed(&self) {
        let now = stamp_of(&self.path);
        if now != *self.stamp.read().expect("never poisoned") {
            self.reload();
        }
    }

    fn principal_of(&self, token: &str) -> Option<Principal> {
        self.table
            .read()
            .expect("never poisoned")
            .as_ref()
            .and_then(|table| table.principal_of(token))
    }

    /// Watches the file (every [`RELOAD_EVERY`], and on SIGHUP) until `stop`.
    pub fn watch(self: &Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let file = self.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let mut hangup = signal(SignalKind::hangup()).ok();
            let mut ticks = tokio::time::interval(RELOAD_EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticks.tick() => file.reload_if_changed(),
                    Some(()) = async { hangup.as_mut()?.recv().await } => file.reload(),
                }
            }
        });
    }
}

fn stamp_of(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

fn read(path: &Path) -> Result<(Table, Option<(SystemTime, u64)>), TokensError> {
    let stamp = stamp_of(path);
    let read_error = |error| TokensError::Read {
        path: path.to_owned(),
        error,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut text = String::new();
    let taken = std::io::Read::read_to_string(
        &mut std::io::Read::take(file, MAX_TOKENS_FILE + 1),
        &mut text,
    )
    .map_err(read_error)?;
    if taken as u64 > MAX_TOKENS_FILE {
        return Err(TokensError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok((Table::parse(path, &text)?, stamp))
}

/// What a request's credentials come to.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed(Principal),
    /// No `Authorization: Bearer` header.
    Missing,
    /// A token that is no principal's (or no longer is).
    Invalid,
}

impl Auth {
    /// Checks the `Authorization` header's value, if any: against the
    /// tokens file first, then, for a token that is none of its, as a JWT.
    pub async fn check(&self, authorization: Option<&[u8]>) -> Verdict {
        let Self::Bearer { tokens, jwt } = self else {
            return Verdict::Allowed(Principal::local());
        };
        let Some(value) = authorization else {
            return Verdict::Missing;
        };
        let Some(token) = std::str::from_utf8(value)
            .ok()
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|token| !token.is_empty())
        else {
            return Verdict::Missing;
        };
        if let Some(principal) = tokens.as_ref().and_then(|file| file.principal_of(token)) {
            return Verdict::Allowed(principal);
        }
        let Some(jwt) = jwt else {
            return Verdict::Invalid;
        };
        match jwt.verify(token).await {
            Ok(principal) => Verdict::Allowed(principal),
            Err(reason) => {
                tracing::info!(%reason, "HTTP request refused: bearer token not valid");
                Verdict::Invalid
            }
        }
    }
}

/// The hash a tokens file line holds for `token` (lowercase hex SHA-256).
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(text: &str) -> (tempdir::Dir, PathBuf) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("tokens");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    mod tempdir {
        /// A directory removed when dropped.
        pub struct Dir(pub std::path::PathBuf);

        impl Dir {
            pub fn new() -> Self {
                static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let path =
                    std::env::temp_dir().join(format!("mcp-auth-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&path).unwrap();
                Self(path)
            }
        }

        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn tokens(file: Arc<TokensFile>) -> Auth {
        Auth::Bearer {
            tokens: Some(file),
            jwt: None,
        }
    }

    fn check(auth: &Auth, authorization: Option<&[u8]>) -> Verdict {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(auth.check(authorization))
    }

    #[test]
    fn tokens_are_checked_against_their_hash_and_reloaded() {
        let text = format!(
            "# team\nann:{}\n\nbob:{}\n",
            token_hash("ann-secret"),
            token_hash("bob-secret")
        );
        let (_dir, path) = file_with(&text);
        let file = TokensFile::open(&path).unwrap();
        let auth = tokens(file.clone());
        let ann = Principal::new("ann").unwrap();
        assert_eq!(
            check(&auth, Some(b"Bearer ann-secret")),
            Verdict::Allowed(ann.clone())
        );
        assert_eq!(
            check(&auth, Some(b"bearer bob-secret")),
            Verdict::Allowed(Principal::new("bob").unwrap())
        );
        assert_eq!(check(&auth, Some(b"Bearer wrong")), Verdict::Invalid);
        assert_eq!(check(&auth, None), Verdict::Missing);
        assert_eq!(check(&auth, Some(b"Basic YW5uOng=")), Verdict::Missing);
        // Revoked: bob's line goes.
        std::fs::write(&path, format!("ann:{}\n", token_hash("ann-secret"))).unwrap();
        file.reload();
        assert_eq!(check(&auth, Some(b"Bearer bob-secret")), Verdict::Invalid);
        assert_eq!(
            check(&auth, Some(b"Bearer ann-secret")),
            Verdict::Allowed(ann)
        );
        // A file that no longer reads serves nobody.
        std::fs::write(&path, "ann:nothex\n").unwrap();
        file.reload();
        assert_eq!(check(&auth, Some(b"Bearer ann-secret")), Verdict::Invalid);
    }

    #[test]
    fn bad_lines_are_named_without_their_hash() {
        let bad = |text: &str| {
            let (_dir, path) = file_with(text);
            TokensFile::open(&path).unwrap_err().to_string()
        };
        let hash = token_hash("x");
        assert!(bad("ann\n").contains("line 1: no ':'"));
        assert!(bad(&format!("ok:{hash}\nann:abc\n")).contains("line 2: the hash is not 64"));
        assert!(bad(&format!("a b:{hash}\n")).contains("principal name"));
        assert!(bad(&format!("a:{hash}\na:{hash}\n")).contains("a is named twice"));
        assert!(bad("# nobody\n").contains("names no principal"));
        for reserved in RESERVED {
            assert!(bad(&format!("{reserved}:{hash}\n")).contains("is reserved"));
        }
        assert!(!bad(&format!("a:{hash}\na:{hash}\n")).contains(&hash));
        assert_eq!(
            check(&Auth::Local, None),
            Verdict::Allowed(Principal::local())
        );
    }
}
