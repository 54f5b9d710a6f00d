//! The controller's TOML configuration file: any text parses or is refused with an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = controller::config::parse_file(text);
    }
});
