//! The environment loader and validator on arbitrary environment.yaml text: errors, never a
//! panic, and nothing read outside the in-memory commit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phoenix::env::{self, MemFiles};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let files = MemFiles::default()
        .with("environments/f/environment.yaml", text)
        .with("templates/values.yaml", "a: 1\n")
        .with(
            "templates/addons/x/cm.yaml.j2",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
        );
    if let Ok(e) = env::load(&files, "f") {
        let mut out = Vec::new();
        env::validate::check(&e, &files, &mut out);
        let _ = phoenix::plan::build(&e);
    }
});
