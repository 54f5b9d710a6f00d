//! Ignore files (`.gitignore`, `.ignore` and `.git/info/exclude`) with git's rules, matched by
//! the `ignore` crate's gitignore matcher (globs compiled to automata: matching time is linear in
//! the path, whatever the patterns). The scan in `scan.rs` keeps one [`IgnoreFile`] per
//! directory it enters; the text comes from [`crate::scan::read_regular`], never through a link.

use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

/// Longest ignore file read; a longer one is ignored as a whole.
pub const MAX_IGNORE_FILE: u64 = 256 * 1024;

/// The patterns of one ignore file, relative to the directory that holds it.
#[derive(Debug, Clone)]
pub struct IgnoreFile {
    /// The holding directory, relative to the repository root (`""` for the root), no trailing `/`.
    base: String,
    matcher: Gitignore,
}

impl IgnoreFile {
    /// Parses the text of an ignore file held in `base` (relative to the repository root).
    /// Lines that are not valid patterns are skipped, as git skips them.
    pub fn parse(base: &str, text: &str) -> IgnoreFile {
        let base = base.trim_end_matches('/').to_string();
        let mut b = GitignoreBuilder::new(if base.is_empty() { "." } else { &base });
        for line in text.lines() {
            let _ = b.add_line(None, line);
        }
        let matcher = b.build().unwrap_or_else(|_| Gitignore::empty());
        IgnoreFile { base, matcher }
    }

    /// `Some(true)` if the last matching rule ignores `path`, `Some(false)` if it re-includes it,
    /// `None` if no rule matches. `path` is relative to the repository root.
    pub fn matches(&self, path: &str, is_dir: bool) -> Option<bool> {
        let rel = if self.base.is_empty() {
            path
        } else {
            path.strip_prefix(&self.base)?.strip_prefix('/')?
        };
        match self.matcher.matched(rel, is_dir) {
            Match::None => None,
            Match::Ignore(_) => Some(true),
            Match::Whitelist(_) => Some(false),
        }
    }
}

/// Whether `path` is ignored by a stack of ignore files, outermost first (the innermost match wins).
pub fn ignored(stack: &[IgnoreFile], path: &str, is_dir: bool) -> bool {
    stack
        .iter()
        .rev()
        .find_map(|f| f.matches(path, is_dir))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitignore_rules() {
        let root = IgnoreFile::parse("", "# c\n*.log\n/build\nout/\n!keep.log\ndocs/**/gen\n");
        assert_eq!(root.matches("a/b/x.log", false), Some(true));
        assert_eq!(root.matches("keep.log", false), Some(false));
        assert_eq!(root.matches("build", true), Some(true));
        assert_eq!(root.matches("src/build", true), None);
        assert_eq!(root.matches("src/out", true), Some(true));
        assert_eq!(root.matches("src/out", false), None);
        assert_eq!(root.matches("docs/gen", true), Some(true));
        assert_eq!(root.matches("docs/a/b/gen", true), Some(true));
        let sub = IgnoreFile::parse("src", "*.tmp\n/local.rs\n");
        assert_eq!(sub.matches("src/a/x.tmp", false), Some(true));
        assert_eq!(sub.matches("src/local.rs", false), Some(true));
        assert_eq!(sub.matches("src/a/local.rs", false), None);
        assert_eq!(sub.matches("other/x.tmp", false), None);
        assert!(ignored(&[root.clone(), sub.clone()], "src/a.tmp", false));
        let class = IgnoreFile::parse("", "file[0-9].py\n");
        assert_eq!(class.matches("file3.py", false), Some(true));
        assert_eq!(class.matches("filex.py", false), None);
    }

    #[test]
    fn pathological_patterns_match_in_linear_time() {
        // Exponential for a backtracking matcher: 2^n ways to split the name among the stars.
        let evil = format!("{}b\n{}\n", "*a".repeat(30), "**/".repeat(200));
        let f = IgnoreFile::parse("", &evil);
        let name = "a".repeat(5000);
        let started = std::time::Instant::now();
        for _ in 0..100 {
            assert_ne!(f.matches(&name, false), Some(false));
        }
        // Generous: a backtracking matcher does not finish this in hours.
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }
}
