//! Secrets never leave the runner in a log line or a result text, even through a leak path that
//! was missed elsewhere. Two layers:
//! - what this process knows to be secret (its private key, the model credential) is remembered
//!   with [`remember`] and replaced wherever it appears;
//! - text shaped like a credential (API keys, gateway tokens, GitHub and cloud tokens, JWTs,
//!   private-key blocks) is replaced whoever it belongs to.
//!
//! Log streams arrive in arbitrary pieces, so a [`Scrubber`] keeps each stream's unfinished line
//! back until its newline (or until it reaches [`HOLD`] bytes, keeping an overlap longer than any
//! secret) and scrubs whole lines; [`Scrubber::flush`] releases what is held when a run ends.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

use regex::bytes::Regex;

/// What replaces a secret.
pub const MARK: &str = "[redacted]";

/// Longest unfinished line held back before it is scrubbed in pieces.
pub const HOLD: usize = 16 * 1024;

/// Bytes kept back from a piece so a secret cut in two is still seen whole.
const OVERLAP: usize = 512;

/// Shortest remembered secret (shorter ones would redact ordinary words).
const MIN_SECRET: usize = 12;

/// Lines of a private-key block after which the block is taken as ended.
const MAX_KEY_LINES: u32 = 200;

/// The secrets this process knows, and one pattern matching any of them.
#[derive(Default)]
struct Known {
    secrets: Vec<String>,
    pattern: Option<Regex>,
}

fn known() -> &'static RwLock<Known> {
    static KNOWN: OnceLock<RwLock<Known>> = OnceLock::new();
    KNOWN.get_or_init(RwLock::default)
}

/// Remembers a secret of this process: it and each of its lines (for PEM keys) are redacted from
/// now on.
pub fn remember(secret: &str) {
    let mut k = known().write().expect("secrets lock");
    let before = k.secrets.len();
    for piece in std::iter::once(secret.trim()).chain(secret.lines().map(str::trim)) {
        if piece.len() >= MIN_SECRET
            && !piece.starts_with("-----")
            && !k.secrets.iter().any(|s| s == piece)
        {
            k.secrets.push(piece.to_owned());
        }
    }
    if k.secrets.len() != before {
        // Longest first, so a secret that contains another is replaced whole.
        k.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let alternatives: Vec<String> = k.secrets.iter().map(|s| regex::escape(s)).collect();
        k.pattern = Regex::new(&alternatives.join("|")).ok();
    }
}

fn shapes() -> &'static Regex {
    static SHAPES: OnceLock<Regex> = OnceLock::new();
    SHAPES.get_or_init(|| {
        Regex::new(concat!(
            r"sk-[A-Za-z0-9_\-]{20,}",
            r"|bpgw-[0-9a-f]{16,}",
            r"|bp[jt]_[A-Za-z0-9_\-]{16,}",
            r"|gh[pousr]_[A-Za-z0-9]{30,}",
            r"|github_pat_[A-Za-z0-9_]{20,}",
            r"|AKIA[0-9A-Z]{16}",
            r"|xox[abprs]-[A-Za-z0-9\-]{10,}",
            r"|eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
        ))
        .expect("secret shapes")
    })
}

fn key_begin() -> &'static Regex {
    static BEGIN: OnceLock<Regex> = OnceLock::new();
    BEGIN
        .get_or_init(|| Regex::new(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----").expect("pem"))
}

fn key_end() -> &'static Regex {
    static END: OnceLock<Regex> = OnceLock::new();
    END.get_or_init(|| Regex::new(r"-----END [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----").expect("pem"))
}

/// Replaces every known secret and credential-shaped text in `text`.
pub fn scrub_str(text: &str) -> String {
    let mut s = Scrubber::default();
    let mut out = s.scrub("text", text.as_bytes());
    for (_, rest) in s.flush() {
        out.extend(rest);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Scrubs streams that arrive in pieces.
#[derive(Debug, Default)]
pub struct Scrubber {
    streams: HashMap<String, StreamState>,
}

#[derive(Debug, Default)]
struct StreamState {
    held: Vec<u8>,
    /// Lines seen inside a private-key block (0: not in one).
    in_key: u32,
}

impl Scrubber {
    /// Scrubs `data` of `stream`; returns what can be released now.
    pub fn scrub(&mut self, stream: &str, data: &[u8]) -> Vec<u8> {
        let st = self.streams.entry(stream.to_owned()).or_default();
        st.held.extend_from_slice(data);
        let mut out = Vec::new();
        let cut = match st.held.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None if st.held.len() >= HOLD => st.held.len() - OVERLAP,
            None => 0,
        };
        if cut > 0 {
            let ready: Vec<u8> = st.held.drain(..cut).collect();
            scrub_lines(&ready, &mut st.in_key, &mut out);
        }
        out
    }

    /// Releases everything held, scrubbed, per stream.
    pub fn flush(&mut self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for (name, st) in &mut self.streams {
            if st.held.is_empty() {
                continue;
            }
            let held = std::mem::take(&mut st.held);
            let mut bytes = Vec::new();
            scrub_lines(&held, &mut st.in_key, &mut bytes);
            out.push((name.clone(), bytes));
        }
        out.sort();
        out
    }
}

fn scrub_lines(data: &[u8], in_key: &mut u32, out: &mut Vec<u8>) {
    let known = known().read().expect("secrets lock");
    let plain = |text: &[u8], out: &mut Vec<u8>| {
        let text = match &known.pattern {
            Some(p) => p.replace_all(text, MARK.as_bytes()),
            None => std::borrow::Cow::Borrowed(text),
        };
        out.extend_from_slice(&shapes().replace_all(&text, MARK.as_bytes()));
    };
    for line in data.split_inclusive(|b| *b == b'\n') {
        let newline = line.ends_with(b"\n");
        let mut rest = line;
        if *in_key > 0 {
            *in_key += 1;
            match key_end().find(rest) {
                Some(m) => {
                    *in_key = 0;
                    // The block's first line already ended the marker's line.
                    rest = match &rest[m.end()..] {
                        b"\n" => b"",
                        r => r,
                    };
                }
                None => {
                    if *in_key > MAX_KEY_LINES {
                        *in_key = 0;
                    }
                    continue;
                }
            }
        }
        // Key blocks inside the line (one line of JSON can carry a whole escaped key).
        while let Some(begin) = key_begin().find(rest) {
            plain(&rest[..begin.start()], out);
            out.extend_from_slice(format!("{MARK} (private key)").as_bytes());
            rest = &rest[begin.end()..];
            match key_end().find(rest) {
                Some(end) => rest = &rest[end.end()..],
                None => {
                    *in_key = 1;
                    rest = if newline { b"\n" } else { b"" };
                    break;
                }
            }
        }
        plain(rest, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_secrets_and_credential_shapes_are_replaced() {
        remember("runner-credential-0123456789");
        let text = "key runner-credential-0123456789 and sk-ant-api03-AAAAAAAAAAAAAAAAAAAAAAAAAA token bpgw-0123456789abcdef0123 gh ghp_abcdefghijklmnopqrstuvwxyz0123456789 ok";
        let out = scrub_str(text);
        assert!(!out.contains("runner-credential"), "{out}");
        assert!(!out.contains("sk-ant"), "{out}");
        assert!(!out.contains("bpgw-0123"), "{out}");
        assert!(!out.contains("ghp_"), "{out}");
        assert!(out.starts_with("key [redacted] and [redacted]"), "{out}");
        assert!(out.ends_with(" ok"), "{out}");
        assert_eq!(scrub_str("plain words stay"), "plain words stay");
    }

    #[test]
    fn a_secret_cut_across_pieces_and_a_key_block_are_caught() {
        remember("SPLIT-SECRET-abcdefghijkl");
        let mut s = Scrubber::default();
        let mut out = s.scrub("stderr", b"before SPLIT-SECRET-abc");
        out.extend(s.scrub("stderr", b"defghijkl after\n"));
        out.extend(s.scrub(
            "stderr",
            b"-----BEGIN PRIVATE KEY-----\nMIIEvAIBADANBgkqhkiG9w0BAQEFAASC\nabc\n-----END PRIVATE KEY-----\nvisible\n",
        ));
        for (_, rest) in s.flush() {
            out.extend(rest);
        }
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            out,
            "before [redacted] after\n[redacted] (private key)\nvisible\n"
        );
        // A whole key inside one line, between other secrets and text that must stay.
        let line = format!(
            "a sk-ant-{} b -----BEGIN RSA PRIVATE KEY-----\\nMIIE\\n-----END RSA PRIVATE KEY----- c\n",
            "x".repeat(30)
        );
        assert_eq!(
            scrub_str(&line),
            "a [redacted] b [redacted] (private key) c\n"
        );
        // An endless line is released in pieces that keep an overlap.
        let mut s = Scrubber::default();
        let mut total = 0;
        for _ in 0..10 {
            total += s.scrub("agent", &[b'x'; HOLD]).len();
        }
        total += s.flush().iter().map(|(_, b)| b.len()).sum::<usize>();
        assert_eq!(total, 10 * HOLD);
    }
}
