//! Template rendering on arbitrary template text and values: a render error or manifests,
//! never a panic or a hang (the renderer's fuel bounds loops).
#![no_main]

use libfuzzer_sys::fuzz_target;
use phoenix::env::{self, MemFiles};
use phoenix::render::{Mode, Renderer, SecretValues};

const ENV: &str = "apiVersion: phoenix/v1\nkind: Environment\nmetadata: {name: f}\nspec:\n  cluster: {existing: {kubeconfig: /dev/null}}\n  addons:\n    - {name: x, template: addons/x}\n";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Input: template text, optionally followed by NUL and a values.yaml.
    let (template, values) = text.split_once('\0').unwrap_or((text, "a: 1\n"));
    let files = MemFiles::default()
        .with("environments/f/environment.yaml", ENV)
        .with("templates/values.yaml", values)
        .with("templates/addons/x/t.yaml.j2", template);
    let Ok(e) = env::load(&files, "f") else {
        return;
    };
    let Ok(r) = Renderer::new(&files, &e, "f", SecretValues::redacted(&e), Mode::Display) else {
        return;
    };
    for c in &e.addons {
        let _ = r.manifests(&files, c);
    }
});
