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
        // The cloud nodes of the run graph, built from the model alone (as `plan --offline` does).
        if let Some(cloud) = &e.cloud {
            use phoenix::providers::aws;
            let desired = aws::desired(cloud, &e.name, &aws::DesiredInputs::default());
            let _ = aws::converge_specs(
                &desired,
                &aws::LiveCloud::default(),
                std::time::Duration::from_secs(1),
            );
        }
    }
});
