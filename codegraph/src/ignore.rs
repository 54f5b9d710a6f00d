//! Ignore files: the subset of gitignore rules the scan needs (`.gitignore`, `.ignore` and
//! `.git/info/exclude`): comments, negation, directory-only patterns, anchoring, `*`, `?`,
//! `[...]` and `**`. The scan in `scan.rs` keeps one [`IgnoreFile`] per directory it enters.

/// The patterns of one ignore file, relative to the directory that holds it.
#[derive(Debug, Default, Clone)]
pub struct IgnoreFile {
    /// The holding directory, relative to the repository root (`""` for the root), no trailing `/`.
    base: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    glob: Vec<u8>,
    negated: bool,
    dir_only: bool,
    /// Anchored patterns match the path relative to `base`; others match any trailing part.
    anchored: bool,
}

impl IgnoreFile {
    /// Parses the text of an ignore file held in `base` (relative to the repository root).
    pub fn parse(base: &str, text: &str) -> IgnoreFile {
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            let mut line = trim_unescaped_trailing_spaces(line);
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let negated = line.starts_with('!');
            if negated {
                line = &line[1..];
            }
            let line = line.strip_prefix('\\').unwrap_or(line);
            let dir_only = line.ends_with('/');
            let line = line.trim_end_matches('/');
            if line.is_empty() {
                continue;
            }
            let anchored = line.contains('/');
            let line = line.strip_prefix('/').unwrap_or(line);
            rules.push(Rule {
                glob: line.as_bytes().to_vec(),
                negated,
                dir_only,
                anchored,
            });
        }
        IgnoreFile {
            base: base.trim_end_matches('/').to_string(),
            rules,
        }
    }

    /// `Some(true)` if the last matching rule ignores `path`, `Some(false)` if it re-includes it,
    /// `None` if no rule matches. `path` is relative to the repository root.
    pub fn matches(&self, path: &str, is_dir: bool) -> Option<bool> {
        let rel = if self.base.is_empty() {
            path
        } else {
            path.strip_prefix(&self.base)?.strip_prefix('/')?
        };
        let name = rel.rsplit('/').next().unwrap_or(rel);
        let mut verdict = None;
        for rule in &self.rules {
            if rule.dir_only && !is_dir {
                continue;
            }
            let hit = if rule.anchored {
                glob_match(&rule.glob, rel.as_bytes())
            } else {
                glob_match(&rule.glob, name.as_bytes())
            };
            if hit {
                verdict = Some(!rule.negated);
            }
        }
        verdict
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

fn trim_unescaped_trailing_spaces(line: &str) -> &str {
    let trimmed = line.trim_end_matches(' ');
    if trimmed.ends_with('\\') && trimmed.len() < line.len() {
        &line[..trimmed.len() + 1]
    } else {
        trimmed
    }
}

/// Glob match where `*` and `?` never cross `/` and `**` crosses any number of segments.
fn glob_match(pat: &[u8], text: &[u8]) -> bool {
    if pat.is_empty() {
        return text.is_empty();
    }
    if pat.starts_with(b"**") {
        let rest = &pat[2..];
        let rest = rest.strip_prefix(b"/").unwrap_or(rest);
        if rest.is_empty() {
            return true;
        }
        // `**/x` matches `x` at the start or after any `/`
        if glob_match(rest, text) {
            return true;
        }
        return (0..text.len()).any(|i| text[i] == b'/' && glob_match(rest, &text[i + 1..]));
    }
    match pat[0] {
        b'*' => {
            let rest = &pat[1..];
            for i in 0..=text.len() {
                if glob_match(rest, &text[i..]) {
                    return true;
                }
                if i < text.len() && text[i] == b'/' {
                    return false;
                }
            }
            false
        }
        b'?' => !text.is_empty() && text[0] != b'/' && glob_match(&pat[1..], &text[1..]),
        b'[' => {
            let Some(close) = pat.iter().skip(1).position(|&c| c == b']') else {
                return !text.is_empty() && text[0] == b'[' && glob_match(&pat[1..], &text[1..]);
            };
            let class = &pat[1..close + 1];
            if text.is_empty() || text[0] == b'/' {
                return false;
            }
            let (negate, class) = match class.first() {
                Some(b'!') | Some(b'^') => (true, &class[1..]),
                _ => (false, class),
            };
            let c = text[0];
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == b'-' {
                    hit |= class[i] <= c && c <= class[i + 2];
                    i += 3;
                } else {
                    hit |= class[i] == c;
                    i += 1;
                }
            }
            hit != negate && glob_match(&pat[close + 2..], &text[1..])
        }
        b'\\' if pat.len() > 1 => {
            !text.is_empty() && text[0] == pat[1] && glob_match(&pat[2..], &text[1..])
        }
        c => !text.is_empty() && text[0] == c && glob_match(&pat[1..], &text[1..]),
    }
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
}
