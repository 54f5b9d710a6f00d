//! The reviewer's answer and the diff windows: a parsed approval always comes from a last
//! `VERDICT:` line that says APPROVE, and windows cover the diff exactly, each within its size.
#![no_main]

use controller::pipeline::review::{WINDOW, parse_verdict, verdict_line, windows};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(v) = parse_verdict(&text)
        && v.approve
    {
        let last = verdict_line(&text).expect("an approval has a verdict line");
        assert!(last.to_ascii_uppercase().contains("APPROVE"), "{last}");
    }
    if let Ok(parts) = windows(&text) {
        assert_eq!(parts.concat(), text);
        assert!(parts.iter().all(|p| p.len() <= WINDOW));
    }
});
