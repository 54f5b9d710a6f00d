//! Ignore rules from a hostile `.gitignore` matched against a hostile path: never a panic (and,
//! with libFuzzer's timeout, never a slow match).
#![no_main]

use codegraph::ignore::{IgnoreFile, ignored};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (rules, path) = text.split_once('\0').unwrap_or((&text, "src/a/b.rs"));
    let root = IgnoreFile::parse("", rules);
    let sub = IgnoreFile::parse("src", rules);
    for is_dir in [false, true] {
        let _ = root.matches(path, is_dir);
        let _ = ignored(&[root.clone(), sub.clone()], path, is_dir);
    }
});
