//! Rendering for prompts: navigation maps and blast radii as compact text. Every name comes
//! from the repository and is untrusted: control and invisible characters are removed, names
//! are truncated, and the block is fenced as untrusted data by `textguard::fence`, the fence
//! every prompt uses, so no name can close it.

use crate::blast::{BlastRadius, SymbolRef};
use crate::navigate::NavigationMap;

/// Limits of rendered text.
#[derive(Clone, Debug)]
pub struct RenderOptions {
    /// Longest name kept (characters); longer ones end in `…`.
    pub max_name_chars: usize,
    /// Longest output body (characters) before the list is cut.
    pub max_chars: usize,
}

impl Default for RenderOptions {
    fn default() -> RenderOptions {
        RenderOptions {
            max_name_chars: 120,
            max_chars: 6000,
        }
    }
}

/// A name made safe for a one-line prompt entry.
pub fn clean_name(name: &str, max_chars: usize) -> String {
    let cleaned: String = textguard::clean_plain(name)
        .chars()
        .map(|c| if c.is_whitespace() { ' ' } else { c })
        .collect();
    let cleaned = cleaned.trim();
    if cleaned.chars().count() <= max_chars {
        return cleaned.to_string();
    }
    let mut out: String = cleaned.chars().take(max_chars.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Wraps `body` in the untrusted-data fence, under a header saying where it comes from.
fn fence(title: &str, body: &str) -> String {
    format!(
        "{title} (derived from repository contents)\n{}",
        textguard::fence_plain("code graph", body)
    )
}

fn push_line(body: &mut String, line: &str, opts: &RenderOptions, cut: &mut bool) {
    if *cut {
        return;
    }
    if body.chars().count() + line.chars().count() + 1 > opts.max_chars {
        body.push_str("… (truncated)\n");
        *cut = true;
        return;
    }
    body.push_str(line);
    body.push('\n');
}

fn sym(r: &SymbolRef, opts: &RenderOptions) -> String {
    let path = clean_name(&r.path, opts.max_name_chars);
    if r.name.is_empty() {
        path
    } else {
        format!(
            "{path}:{} {}",
            r.line,
            clean_name(&r.name, opts.max_name_chars)
        )
    }
}

/// A navigation map as a fenced list of files with key symbols and reasons.
pub fn navigation(map: &NavigationMap, opts: &RenderOptions) -> String {
    let mut body = String::new();
    let mut cut = false;
    for (i, f) in map.files.iter().enumerate() {
        push_line(
            &mut body,
            &format!("{}. {}", i + 1, clean_name(&f.path, opts.max_name_chars)),
            opts,
            &mut cut,
        );
        if !f.symbols.is_empty() {
            let names: Vec<String> = f
                .symbols
                .iter()
                .map(|s| {
                    format!(
                        "{} (line {})",
                        clean_name(&s.name, opts.max_name_chars),
                        s.line
                    )
                })
                .collect();
            push_line(
                &mut body,
                &format!("   symbols: {}", names.join(", ")),
                opts,
                &mut cut,
            );
        }
        if !f.reasons.is_empty() {
            let reasons: Vec<String> = f
                .reasons
                .iter()
                .map(|r| clean_name(r, opts.max_name_chars * 2))
                .collect();
            push_line(
                &mut body,
                &format!("   why: {}", reasons.join("; ")),
                opts,
                &mut cut,
            );
        }
    }
    fence("Files to look at first", &body)
}

/// A blast radius as a fenced list: changed symbols, impacted symbols with their edges,
/// impacted files and covering tests.
pub fn blast_radius(b: &BlastRadius, opts: &RenderOptions) -> String {
    let mut body = String::new();
    let mut cut = false;
    push_line(&mut body, "changed:", opts, &mut cut);
    for c in &b.changed {
        push_line(&mut body, &format!("  {}", sym(c, opts)), opts, &mut cut);
    }
    push_line(
        &mut body,
        "impacted (hops, edge, depends on):",
        opts,
        &mut cut,
    );
    for i in &b.impacted {
        let line = format!(
            "  {} [{} {:?} -> {}]",
            sym(&i.symbol, opts),
            i.hops,
            i.via,
            sym(&i.depends_on, opts)
        );
        push_line(&mut body, &line, opts, &mut cut);
    }
    if b.truncated > 0 {
        push_line(
            &mut body,
            &format!("  … {} more", b.truncated),
            opts,
            &mut cut,
        );
    }
    push_line(
        &mut body,
        "impacted files outside the change:",
        opts,
        &mut cut,
    );
    for f in &b.impacted_files {
        push_line(
            &mut body,
            &format!("  {}", clean_name(f, opts.max_name_chars)),
            opts,
            &mut cut,
        );
    }
    push_line(&mut body, "tests that reach the change:", opts, &mut cut);
    for t in &b.tests {
        push_line(&mut body, &format!("  {}", sym(t, opts)), opts, &mut cut);
    }
    fence("Blast radius of the change", &body)
}
