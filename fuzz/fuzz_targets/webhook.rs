//! Webhook payloads through intake's decoding (the first byte picks the event): never a panic;
//! an issue that decodes is cleaned the way intake snapshots it.
#![no_main]

use libfuzzer_sys::fuzz_target;

const EVENTS: &[&str] = &["issues", "issue_comment", "pull_request_review", "ping"];

fuzz_target!(|data: &[u8]| {
    let Some((first, body)) = data.split_first() else {
        return;
    };
    let event = EVENTS[*first as usize % EVENTS.len()];
    if let Ok(controller::intake::Decoded::Issue { issue, .. }) =
        controller::intake::decode(event, body)
    {
        let title = textguard::clean_report(&issue.title, textguard::Format::Plain);
        let body = textguard::clean_report(&issue.body, textguard::Format::Markdown);
        assert!(!body.text.chars().any(textguard::invisible));
        assert!(!title.text.chars().any(textguard::invisible));
    }
});
