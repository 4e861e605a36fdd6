//! Operator tokens: who may call the operator API, and whether they may change anything.
//!
//! Tokens come from a file (`admin.tokens_file`) and from the environment
//! (`JOURNEYD_ADMIN_TOKENS`), one token a line (or, in the environment, separated by commas):
//!
//! ```text
//! # name     access  secret
//! grafana    read    3b0c5f7e9a1d4c2b8e6f0a7d5c3b1e9f
//! oncall     write   9f8e7d6c5b4a39281706f5e4d3c2b1a0
//! ```
//!
//! A secret is at least [`MIN_SECRET`] characters. A caller sends it as
//! `Authorization: Bearer <secret>`. Secrets are kept only as SHA-256 digests, and a presented
//! one is compared with every known digest in constant time, so neither the answer's time nor a
//! memory dump tells a secret.

use sha2::{Digest, Sha256};
use std::path::Path;
use subtle::ConstantTimeEq;

/// The environment variable with tokens (beside or instead of the file).
pub const ENV: &str = "JOURNEYD_ADMIN_TOKENS";

/// The shortest secret accepted.
pub const MIN_SECRET: usize = 16;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Look: journeys, reports.
    Read,
    /// Look and change: journey status, customers (which show personal data).
    Write,
}

/// A known token: its name (for the audit log) and what it may do.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The name the audit log gives.
    pub name: String,
    /// What it may do.
    pub access: Access,
    digest: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the digest.
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

/// The known tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens(Vec<Token>);

/// Why the tokens cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The file cannot be read.
    #[error("cannot read the operator tokens file {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A line is not `name access secret`.
    #[error("{source_name}:{line}: {why}")]
    Line {
        /// The file, or the environment variable.
        source_name: String,
        /// 1-based line (or entry) number.
        line: usize,
        /// What is wrong (never the secret).
        why: String,
    },
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl Tokens {
    /// The tokens of `admin.tokens_file` (if any) and of [`ENV`] (if set).
    pub fn load(file: Option<&Path>, env: Option<&str>) -> Result<Tokens, TokenError> {
        let mut tokens = Tokens::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| TokenError::Read {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            tokens.parse(&path.display().to_string(), text.lines())?;
        }
        if let Some(text) = env {
            tokens.parse(ENV, text.split([',', '\n']))?;
        }
        Ok(tokens)
    }

    fn parse<'a>(
        &mut self,
        source_name: &str,
        lines: impl Iterator<Item = &'a str>,
    ) -> Result<(), TokenError> {
        for (i, raw) in lines.enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: String| TokenError::Line {
                source_name: source_name.to_owned(),
                line: i + 1,
                why,
            };
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [name, access, secret] = parts[..] else {
                return Err(bad(format!(
                    "expected `name access secret` (three words), found {} words",
                    parts.len()
                )));
            };
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
            {
                return Err(bad(format!(
                    "the token name `{name}` may only have letters, digits and - _ . @"
                )));
            }
            let access = match access {
                "read" => Access::Read,
                "write" => Access::Write,
                // Not echoed: with the columns swapped it would be the secret.
                _ => {
                    return Err(bad(format!(
                        "token `{name}`: the second word (the access) must be `read` or `write`"
                    )))
                }
            };
            if secret.chars().count() < MIN_SECRET {
                return Err(bad(format!(
                    "token `{name}`: the secret is shorter than {MIN_SECRET} characters"
                )));
            }
            let digest = digest(secret);
            if self.0.iter().any(|t| t.name == name) {
                return Err(bad(format!("token `{name}` is given twice")));
            }
            if self.0.iter().any(|t| t.digest == digest) {
                return Err(bad(format!(
                    "token `{name}` has the secret of another token"
                )));
            }
            self.0.push(Token {
                name: name.to_owned(),
                access,
                digest,
            });
        }
        Ok(())
    }

    /// How many tokens are known.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no token is known (then every call is refused).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The token whose secret this is. Every known digest is compared, in constant time.
    pub fn find(&self, secret: &str) -> Option<&Token> {
        let presented = digest(secret);
        let mut found = None;
        for t in &self.0 {
            if bool::from(t.digest.ct_eq(&presented)) {
                found = Some(t);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# name access secret\n\ngrafana read 0123456789abcdef\noncall  write  fedcba9876543210-x\n";

    #[test]
    fn reads_a_file_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, FILE).unwrap();
        let tokens = Tokens::load(Some(&path), Some("ci write aaaaaaaaaaaaaaaaaaaaaa")).unwrap();
        assert_eq!(tokens.len(), 3);
        let g = tokens.find("0123456789abcdef").unwrap();
        assert_eq!((g.name.as_str(), g.access), ("grafana", Access::Read));
        assert_eq!(
            tokens.find("fedcba9876543210-x").unwrap().access,
            Access::Write
        );
        assert_eq!(tokens.find("aaaaaaaaaaaaaaaaaaaaaa").unwrap().name, "ci");
        assert!(tokens.find("0123456789abcdeF").is_none());
        assert!(tokens.find("").is_none());
        // The debug form never shows the digest.
        assert!(!format!("{tokens:?}").contains("digest"));
    }

    #[test]
    fn bad_lines_say_where_and_why_without_the_secret() {
        let check = |text: &str, line: usize, why: &str| {
            let e = Tokens::load(None, Some(text)).unwrap_err();
            match &e {
                TokenError::Line {
                    line: l, why: w, ..
                } => {
                    assert_eq!(*l, line, "{e}");
                    assert!(w.contains(why), "{e}");
                }
                other => panic!("{other}"),
            }
            assert!(e.to_string().starts_with(ENV), "{e}");
        };
        check("a read", 1, "three words");
        check(
            "ok read 0123456789abcdef,b admin 0123456789abcdef0",
            2,
            "must be `read` or `write`",
        );
        // Columns swapped: the secret is not printed.
        let e = Tokens::load(None, Some("a 0123456789abcdefXYZ write")).unwrap_err();
        assert!(!e.to_string().contains("XYZ"), "{e}");
        check("a read short", 1, "shorter than 16");
        check("a/b read 0123456789abcdef", 1, "may only have");
        check(
            "a read 0123456789abcdef,a write 0123456789abcdefg",
            2,
            "twice",
        );
        check(
            "a read 0123456789abcdef,b write 0123456789abcdef",
            2,
            "another token",
        );
        let e = Tokens::load(None, Some("a read tiny")).unwrap_err();
        assert!(!e.to_string().contains("tiny"), "{e}");
        let missing = Tokens::load(Some(Path::new("/nonexistent/tokens")), None).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/tokens"));
    }
}
