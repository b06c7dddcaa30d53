//! The Containerfile (no container engine here to build it): linted by hadolint, and parsed for what the management env's Deployment relies on — an unprivileged numeric
//! user equal to the pod's `runAsUser`, phoenix as the entrypoint, the metrics port, Helm where
//! PHOENIX_HELM points, a Rust toolchain at least the crate's rust-version, and a build context
//! without the build output.

use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Instructions with continuation lines joined; comments and blank lines dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if current.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(t);
        let (op, rest) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((op.to_ascii_uppercase(), rest.trim().to_string()));
        current.clear();
    }
    assert!(current.is_empty(), "a continuation line ends the file");
    out
}

#[test]
fn the_containerfile_builds_what_the_agent_deployment_runs() {
    let text = std::fs::read_to_string(root().join("Containerfile")).expect("Containerfile");
    let all = instructions(&text);
    let froms: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, (op, _))| op == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(froms.len(), 3, "phoenix, helm and runtime stages");
    let last = &all[*froms.last().unwrap()..];
    let get = |op: &str| -> Vec<&str> {
        last.iter()
            .filter(|(o, _)| o == op)
            .map(|(_, r)| r.as_str())
            .collect()
    };
    // Unprivileged, numeric (runAsNonRoot can only verify a numeric user).
    let user = get("USER");
    assert_eq!(user.len(), 1, "{user:?}");
    let uid = user[0].split(':').next().unwrap();
    let uid: u32 = uid.parse().expect("numeric USER");
    assert_ne!(uid, 0);
    assert_eq!(get("ENTRYPOINT"), vec![r#"["/usr/local/bin/phoenix"]"#]);
    let copies = get("COPY").join("\n");
    assert!(
        copies.contains("--from=phoenix /out/phoenix /usr/local/bin/phoenix"),
        "{copies}"
    );
    assert!(
        copies.contains("--from=helm /out/helm /usr/local/bin/helm"),
        "{copies}"
    );
    let env = get("ENV").join(" ");
    assert!(env.contains("PHOENIX_HELM=/usr/local/bin/helm"), "{env}");
    assert!(env.contains("PHOENIX_HOME=/var/lib/phoenix"), "{env}");
    assert_eq!(get("EXPOSE"), vec!["9477"]);
    // The build stage compiles the locked dependency set.
    assert!(
        all.iter()
            .any(|(op, r)| op == "RUN" && r.contains("cargo build --release --locked")),
        "{all:?}"
    );

    // The toolchain is at least the crate's rust-version.
    let cargo = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let need = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("rust-version in Cargo.toml");
    let have = all
        .iter()
        .find_map(|(op, r)| {
            (op == "ARG")
                .then(|| r.strip_prefix("RUST_VERSION="))
                .flatten()
        })
        .expect("ARG RUST_VERSION");
    let v = |s: &str| -> Vec<u32> { s.split('.').map(|p| p.parse().unwrap()).collect() };
    assert!(v(have) >= v(need), "Rust {have} < rust-version {need}");

    // The Deployment runs this image as this user, serving on this port.
    let deployment = std::fs::read_to_string(
        root().join("environments/management/addons/phoenix-watch/deployment.yaml.j2"),
    )
    .unwrap();
    assert!(
        deployment.contains(&format!("runAsUser: {uid}")),
        "{deployment}"
    );
    assert!(deployment.contains("containerPort: 9477"));
    assert!(deployment.contains("0.0.0.0:9477"));
    assert!(deployment.contains("mountPath: /var/lib/phoenix"));

    let ignore = std::fs::read_to_string(root().join(".containerignore")).unwrap();
    for dir in ["target", ".venv", "testenv/bin"] {
        assert!(
            ignore.lines().any(|l| l.trim() == dir),
            "{dir} not in .containerignore"
        );
    }
}

#[test]
fn the_instruction_parser_joins_continuations_and_skips_comments() {
    let got = instructions("# c\nFROM a AS b\nRUN x \\\n    && y\n\nUSER 1:1\n");
    assert_eq!(
        got,
        vec![
            ("FROM".to_string(), "a AS b".to_string()),
            ("RUN".to_string(), "x  && y".to_string()),
            ("USER".to_string(), "1:1".to_string()),
        ]
    );
}

/// hadolint (the `.venv` scripts/setup makes has it) finds nothing, not even at `info` level.
#[test]
fn hadolint_finds_nothing_in_the_containerfile() {
    let hadolint = testkit::tools::require("hadolint");
    let out = std::process::Command::new(hadolint)
        .args(["--failure-threshold", "info"])
        .arg(root().join("Containerfile"))
        .output()
        .expect("hadolint runs");
    assert!(
        out.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
