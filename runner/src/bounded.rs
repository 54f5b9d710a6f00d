//! Bounded handling of what comes out of a sandbox. Everything a container prints or hands back
//! is untrusted and may be endless, so every buffer here has a cap fixed before the first byte
//! arrives, and going over it is recorded rather than fatal:
//! - [`LineSplitter`] cuts the agent's stream into lines, flushing a line that grows past its cap
//!   as a partial line (each byte is scanned once);
//! - [`Tail`] keeps only the last bytes of a stream (the verify output the agent gets back);
//! - [`Capped`] collects a stream up to a cap and counts what it dropped (the finish step's
//!   output archive);
//! - [`read_outputs`] takes the finish step's tar archive apart: regular files with expected names
//!   and sizes under their caps, nothing else — links and special entries are refused, so no path
//!   the sandbox chose is ever opened on the host.

use std::collections::{HashMap, VecDeque};
use std::io::Read;

/// Splits a byte stream into lines (keeping the newline), with a cap on line length.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    /// Bytes of `buf` already known to hold no newline.
    scanned: usize,
    max_line: usize,
}

impl LineSplitter {
    /// Lines longer than `max_line` bytes are cut into pieces of that size.
    pub fn new(max_line: usize) -> Self {
        Self {
            buf: Vec::new(),
            scanned: 0,
            max_line: max_line.max(1),
        }
    }

    /// Adds bytes; returns the complete (or cut) lines they finish.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let room = self.max_line - self.buf.len();
            let take = rest.len().min(room);
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            while let Some(i) = memchr_from(&self.buf, self.scanned) {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                out.push(String::from_utf8_lossy(&line).into_owned());
                self.scanned = 0;
            }
            self.scanned = self.buf.len();
            if self.buf.len() >= self.max_line {
                let line = std::mem::take(&mut self.buf);
                self.scanned = 0;
                out.push(String::from_utf8_lossy(&line).into_owned());
            }
        }
        out
    }

    /// What is left after the stream ended (a last line without a newline).
    pub fn rest(&mut self) -> Option<String> {
        self.scanned = 0;
        (!self.buf.is_empty())
            .then(|| String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned())
    }
}

fn memchr_from(buf: &[u8], from: usize) -> Option<usize> {
    buf[from..]
        .iter()
        .position(|b| *b == b'\n')
        .map(|i| i + from)
}

/// The last `cap` bytes of a stream, and how many came before them.
#[derive(Debug)]
pub struct Tail {
    buf: VecDeque<u8>,
    cap: usize,
    dropped: u64,
}

impl Tail {
    /// Keeps at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            buf: VecDeque::with_capacity(cap.min(1 << 16)),
            cap,
            dropped: 0,
        }
    }

    /// Adds bytes, forgetting the oldest beyond the cap.
    pub fn push(&mut self, bytes: &[u8]) {
        let bytes = if bytes.len() > self.cap {
            self.dropped += (bytes.len() - self.cap) as u64;
            &bytes[bytes.len() - self.cap..]
        } else {
            bytes
        };
        let over = (self.buf.len() + bytes.len()).saturating_sub(self.cap);
        self.buf.drain(..over);
        self.dropped += over as u64;
        self.buf.extend(bytes);
    }

    /// The kept bytes as text, marked when earlier output was dropped.
    pub fn text(&self) -> String {
        let (a, b) = self.buf.as_slices();
        let mut bytes = Vec::with_capacity(a.len() + b.len());
        bytes.extend_from_slice(a);
        bytes.extend_from_slice(b);
        let text = String::from_utf8_lossy(&bytes);
        if self.dropped > 0 {
            format!("[… {} earlier bytes not shown]{text}", self.dropped)
        } else {
            text.into_owned()
        }
    }
}

/// A stream collected up to a cap.
#[derive(Debug)]
pub struct Capped {
    buf: Vec<u8>,
    cap: usize,
    dropped: u64,
}

impl Capped {
    /// Keeps at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            buf: Vec::new(),
            cap,
            dropped: 0,
        }
    }

    /// Adds bytes; those past the cap are counted and dropped.
    pub fn push(&mut self, bytes: &[u8]) {
        let room = self.cap - self.buf.len();
        let take = bytes.len().min(room);
        self.buf.extend_from_slice(&bytes[..take]);
        self.dropped += (bytes.len() - take) as u64;
    }

    /// Bytes dropped past the cap.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The bytes kept.
    pub fn into_inner(self) -> Vec<u8> {
        self.buf
    }
}

/// Why an output archive was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OutputError {
    /// The archive is not a readable tar stream.
    #[error("the finish step's output is not a readable archive: {0}")]
    Malformed(String),
    /// An entry that is not a regular file (a link, a device, a FIFO …).
    #[error("the finish step's output holds `{0}`, which is not a regular file")]
    NotAFile(String),
    /// An entry with a name nobody asked for.
    #[error("the finish step's output holds an unexpected entry `{0}`")]
    Unexpected(String),
    /// An entry over its cap.
    #[error("`{name}` is {size} bytes, over its limit of {cap} bytes")]
    TooLarge {
        /// Entry name.
        name: String,
        /// Its size.
        size: u64,
        /// Its cap.
        cap: u64,
    },
}

/// Reads the files named in `caps` (name → largest size) out of a tar archive. Directories are
/// skipped; any other non-file entry, unknown name or oversized file refuses the whole archive.
pub fn read_outputs(
    archive: &[u8],
    caps: &[(&str, u64)],
) -> Result<HashMap<String, Vec<u8>>, OutputError> {
    let mut out = HashMap::new();
    let mut tar = tar::Archive::new(archive);
    let entries = tar
        .entries()
        .map_err(|e| OutputError::Malformed(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| OutputError::Malformed(e.to_string()))?;
        let path = entry
            .path()
            .map_err(|e| OutputError::Malformed(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        let name = path
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        let kind = entry.header().entry_type();
        if kind.is_dir() && name.is_empty() || name == "." {
            continue;
        }
        if !kind.is_file() {
            return Err(OutputError::NotAFile(textguard::clean_plain(&name)));
        }
        let Some(&(_, cap)) = caps.iter().find(|(n, _)| *n == name) else {
            return Err(OutputError::Unexpected(textguard::clean_plain(&name)));
        };
        let size = entry
            .header()
            .size()
            .map_err(|e| OutputError::Malformed(e.to_string()))?;
        if size > cap {
            return Err(OutputError::TooLarge { name, size, cap });
        }
        let mut data = Vec::with_capacity(size as usize);
        (&mut entry)
            .take(cap)
            .read_to_end(&mut data)
            .map_err(|e| OutputError::Malformed(e.to_string()))?;
        out.insert(name, data);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_capped_without_rescanning() {
        let mut s = LineSplitter::new(8);
        assert_eq!(s.push(b"ab\ncd"), vec!["ab\n"]);
        assert_eq!(s.push(b"e\n"), vec!["cde\n"]);
        // A line past the cap comes out in pieces of the cap.
        assert_eq!(s.push(b"0123456789abcdefXY"), vec!["01234567", "89abcdef"]);
        assert_eq!(s.push(b"\n"), vec!["XY\n"]);
        assert_eq!(s.rest(), None);
        s.push(b"tail");
        assert_eq!(s.rest().as_deref(), Some("tail"));
        // A gigabyte without a newline costs one cap of memory at a time.
        let mut s = LineSplitter::new(1 << 20);
        let chunk = vec![b'x'; 64 * 1024];
        let mut lines = 0;
        for _ in 0..(64 * 16) {
            for l in s.push(&chunk) {
                assert_eq!(l.len(), 1 << 20);
                lines += 1;
            }
            assert!(s.buf.len() < 1 << 20);
        }
        assert_eq!(lines, 64);
    }

    #[test]
    fn a_tail_keeps_the_last_bytes_and_says_what_it_dropped() {
        let mut t = Tail::new(10);
        t.push(b"hello ");
        assert_eq!(t.text(), "hello ");
        t.push(b"world, again");
        assert_eq!(t.text(), "[… 8 earlier bytes not shown]rld, again");
        t.push(&[b'z'; 100]);
        assert!(t.text().ends_with(&"z".repeat(10)));
        assert!(t.text().starts_with("[… 108 earlier bytes"));
    }

    #[test]
    fn capped_counts_what_it_drops() {
        let mut c = Capped::new(5);
        c.push(b"abc");
        c.push(b"defg");
        assert_eq!(c.dropped(), 2);
        assert_eq!(c.into_inner(), b"abcde");
    }

    fn archive(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(if kind.is_file() { data.len() as u64 } else { 0 });
            h.set_mode(0o644);
            if kind.is_symlink() {
                h.set_link_name(std::str::from_utf8(data).unwrap()).unwrap();
                b.append_data(&mut h, name, &[][..]).unwrap();
            } else {
                b.append_data(&mut h, name, *data).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn outputs_are_regular_files_with_expected_names_under_their_caps() {
        let caps = [("status", 16), ("head", 128)];
        let ok = archive(&[
            ("./", tar::EntryType::Directory, b""),
            ("./status", tar::EntryType::Regular, b"ok\n"),
            ("./head", tar::EntryType::Regular, b"abc\n"),
        ]);
        let got = read_outputs(&ok, &caps).unwrap();
        assert_eq!(got["status"], b"ok\n");
        assert_eq!(got["head"], b"abc\n");
        let link = archive(&[("./head", tar::EntryType::Symlink, b"/proc/self/environ")]);
        assert_eq!(
            read_outputs(&link, &caps),
            Err(OutputError::NotAFile("head".into()))
        );
        let hard = archive(&[("./head", tar::EntryType::Link, b"/etc/passwd")]);
        assert!(matches!(
            read_outputs(&hard, &caps),
            Err(OutputError::NotAFile(_))
        ));
        let fifo = archive(&[("./head", tar::EntryType::Fifo, b"")]);
        assert!(matches!(
            read_outputs(&fifo, &caps),
            Err(OutputError::NotAFile(_))
        ));
        let big = archive(&[("./status", tar::EntryType::Regular, &[b'x'; 17])]);
        assert!(matches!(
            read_outputs(&big, &caps),
            Err(OutputError::TooLarge { size: 17, .. })
        ));
        let other = archive(&[("./etc/passwd", tar::EntryType::Regular, b"x")]);
        assert!(matches!(
            read_outputs(&other, &caps),
            Err(OutputError::Unexpected(_))
        ));
        assert!(matches!(
            read_outputs(b"not a tar archive at all, just text", &caps),
            Err(OutputError::Malformed(_)) | Ok(_)
        ));
    }
}
