//! The one fence: whatever the text, the fenced result opens once, closes once, carries no
//! invisible character, and neutralising it again changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for fenced in [
        textguard::fence("issue", &text),
        textguard::fence_plain("title", &text),
        textguard::fence_tail("log", &text),
    ] {
        assert_eq!(fenced.matches("</untrusted>").count(), 1, "{fenced:?}");
        assert_eq!(fenced.matches("<untrusted").count(), 1, "{fenced:?}");
        assert!(fenced.ends_with("</untrusted>\n"));
        assert!(!fenced.chars().any(textguard::invisible));
    }
    let n = textguard::neutralise(&text);
    assert_eq!(textguard::neutralise(&n), n);
    let (shown, _) = textguard::show_invisible(&text);
    assert!(!shown.chars().any(textguard::invisible));
});
