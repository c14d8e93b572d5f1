//! Any bytes as the top-level file: `Config::parse` must return, never
//! panic, and every error must name the file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("/fuzz/stayup.yaml");
    if let Err(e) = stayup::config::Config::parse(path, data) {
        assert!(e.to_string().starts_with("/fuzz/stayup.yaml"), "{e}");
        assert!(e.class().starts_with("config-"));
    }
});
