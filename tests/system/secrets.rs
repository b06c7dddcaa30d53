//! Secrets never leak: every command runs against the demo on moto + the real control plane with its
//! secret reference set, and stdout, stderr, the JSON event streams, drill reports, audit
//! records and every other file phoenix writes are scanned for the secret values, the cluster
//! secret and the tokens and CA private keys derived from it. Zero occurrences. The kubeconfig
//! is 0600. (phoenix keeps no key pair: it derives it from the cluster secret.)

use testkit::bed;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bed::{text, Bed, CLUSTER_SECRET, DB_PASSWORD};

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// The values that must never appear outside the files that hold them: the db password, the
/// cluster secret and what phoenix derives from it (tokens, CA private keys).
fn secret_values(_bed: &Bed) -> Vec<(String, String)> {
    let mut values = vec![
        ("the db password".to_string(), DB_PASSWORD.to_string()),
        ("the cluster secret".to_string(), CLUSTER_SECRET.to_string()),
    ];
    let creds = phoenix::providers::cluster::Credentials::derive(
        Path::new("/nonexistent"),
        "demo",
        &phoenix::providers::cluster::Secret::new(CLUSTER_SECRET),
    )
    .expect("the demo's credentials derive");
    values.push((
        "the server token".to_string(),
        creds.server_token().expose().to_string(),
    ));
    values.push((
        "the agent token".to_string(),
        creds.agent_secret().expose().to_string(),
    ));
    for (name, key) in [
        ("the server CA key", creds.server_ca_key()),
        ("the client CA key", creds.client_ca_key()),
    ] {
        // A PEM key: its base64 body lines are what could leak.
        for line in key.expose().lines() {
            let line = line.trim();
            if line.len() >= 16 && !line.starts_with("-----") {
                values.push((name.to_string(), line.to_string()));
            }
        }
    }
    values
}

#[test]
fn no_command_output_report_or_record_contains_a_secret() {
    let bed = Bed::new();
    let repo = bed.demo_repo();
    let dir = repo.dir.clone();
    let mut outputs: Vec<(String, String)> = Vec::new();
    let mut run = |args: &[&str], ok: &[i32]| {
        let out = bed.phoenix(&dir, args);
        let code = out.status.code().unwrap_or(-1);
        assert!(ok.contains(&code), "phoenix {args:?}: {}", text(&out));
        outputs.push((format!("phoenix {}", args.join(" ")), text(&out)));
    };
    run(&["validate", "demo"], &[0]);
    run(&["plan", "demo", "--offline"], &[0]);
    run(&["plan", "demo", "--offline", "--output", "json"], &[0]);
    run(&["render", "demo"], &[0]);
    run(&["render", "demo", "--output", "json"], &[0]);
    run(&["plan", "demo"], &[0]);
    run(&["rebuild", "demo"], &[0]);
    run(&["rebuild", "demo", "--output", "json", "-v"], &[0]);
    run(&["plan", "demo", "--output", "json"], &[0]);
    run(&["diff", "demo"], &[0]);
    run(&["diff", "demo", "--output", "json"], &[0]);
    // A drifted Secret: its diff must show the change without the values.
    bed.kubectl(
        "demo",
        &[
            "-n",
            "web",
            "patch",
            "secret",
            "web-db",
            "--type=merge",
            "-p",
            r#"{"stringData":{"password":"changed-by-hand-1234"}}"#,
        ],
    );
    run(&["diff", "demo"], &[2]);
    run(&["diff", "demo", "--output", "json"], &[2]);
    run(&["drill", "demo"], &[0]);
    run(&["runbook", "demo"], &[0]);
    run(&["history", "demo"], &[0]);
    run(&["history", "demo", "--output", "json"], &[0]);
    run(&["destroy", "demo", "--yes", "--output", "json"], &[0]);

    let secrets = secret_values(&bed);
    assert!(
        secrets.len() > 3,
        "the k3s credentials were found: {}",
        secrets.len()
    );
    let mut leaks = Vec::new();
    for (what, out) in &outputs {
        for (name, value) in &secrets {
            if out.contains(value.as_str()) {
                leaks.push(format!("{name} in the output of {what}"));
            }
        }
        if out.contains("changed-by-hand-1234") {
            leaks.push(format!("the hand-set Secret value in the output of {what}"));
        }
    }
    // Every file phoenix wrote, the kubeconfig cache included: it holds the per-run admin key by
    // design (0600), but never a token, a CA key or the cluster secret.
    let mut files = Vec::new();
    files_under(&bed.git.phoenix_home(), &mut files);
    let cluster_dir = bed.git.phoenix_home().join("clusters");
    let mut scanned = 0;
    for f in &files {
        let Ok(content) = std::fs::read(f) else {
            continue;
        };
        let content = String::from_utf8_lossy(&content);
        scanned += 1;
        for (name, value) in &secrets {
            if content.contains(value.as_str()) {
                leaks.push(format!("{name} in {}", f.display()));
            }
        }
    }
    assert!(
        scanned >= 5,
        "audit records and drill reports were scanned: {scanned}"
    );
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));

    // The kubeconfig is readable by its owner only; no key pair is kept.
    let mut private = Vec::new();
    files_under(&cluster_dir, &mut private);
    assert!(!bed.phoenix_home_has("keys"));
    assert!(!private.is_empty());
    for f in private {
        let mode = std::fs::metadata(&f).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", f.display());
    }
}
