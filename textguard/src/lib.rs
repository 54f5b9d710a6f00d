//! Cleaning of untrusted text shared by the controller (issue snapshots at intake, review
//! prompts) and the runner (agent prompts): hidden HTML comments, invisible and
//! direction-changing characters, and control characters (newline and tab kept) are removed.
//!
//! Fencing and length caps depend on where the text goes and stay with the caller.
#![deny(missing_docs)]

/// The text without hidden HTML comments, invisible characters and control characters.
pub fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<!--") {
        out.push_str(&rest[..start]);
        rest = match rest[start..].find("-->") {
            Some(end) => &rest[start + end + 3..],
            None => "",
        };
    }
    out.push_str(rest);
    out.retain(|c| !unwanted(c));
    out
}

/// Control characters (but newline and tab) and invisible or direction-changing characters.
fn unwanted(c: char) -> bool {
    let invisible = matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}');
    invisible || (c.is_control() && c != '\n' && c != '\t')
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn hidden_and_invisible_text_is_removed() {
        assert_eq!(
            clean("a<!-- hidden -->b\u{200B}c\u{0007}\nd\te"),
            "abc\nd\te"
        );
        assert_eq!(clean("open <!-- never closed"), "open ");
        assert_eq!(clean("x\u{202E}y\u{FEFF}"), "xy");
    }
}
