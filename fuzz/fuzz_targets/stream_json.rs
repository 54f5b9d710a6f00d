//! The agent's stream-json output: cut into bounded lines and parsed, never a panic, never a
//! line longer than the cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runner::agent::AgentBackend;
use runner::bounded::LineSplitter;

fuzz_target!(|data: &[u8]| {
    let mut lines = LineSplitter::new(4096);
    for chunk in data.chunks(97) {
        for line in lines.push(chunk) {
            assert!(line.len() <= 4096 * 3, "a line past the cap");
            let _ = runner::agent::Claude.parse_line(&line);
        }
    }
    if let Some(rest) = lines.rest() {
        let _ = runner::agent::Claude.parse_line(&rest);
    }
});
