//! One test per bug fixed in the past (ripgrep's tests/regression.rs): each names the bug, how it showed and the
//! commit that fixed it, and fails if the fix is undone — checked by undoing it, or, where the fix is in the test
//! bed's Go code, with the binary from before the fix (as the commit says). Most run the real binary; a new one
//! goes here when a bug is fixed, next to the test of the feature it broke if that is where it reads best.

use std::path::Path;
use std::process::Stdio;

use testkit::control_plane::{self, ControlPlane};
use testkit::git::Sandbox;

use super::cli::{code, command, existing_cluster_repo, phoenix, refused_port, sketch_repo, text};

/// Broken pipes end quietly (71b0747, issue 19): `phoenix render ENV | head -1` panicked ("failed printing to
/// stdout: Broken pipe", exit 101) once the reader had gone; command output is now written through
/// `src/stdout.rs`, which ends the process with exit 0 on EPIPE, as Unix tools do.
#[test]
fn a_reader_closing_the_pipe_early_ends_render_and_history_quietly() {
    let sb = Sandbox::new();
    let repo = sketch_repo(&sb);
    for args in [
        &["render", "design-sketch"][..],
        &["history", "design-sketch"],
        &["plan", "design-sketch", "--offline"],
        &["validate", "design-sketch", "-o", "json"],
    ] {
        // stdout a pipe whose reader is already gone: every write fails with EPIPE.
        let mut child = command(&sb, &repo.dir)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run phoenix");
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait for phoenix");
        let (_, stderr) = text(&out);
        assert_eq!(
            code(&out),
            0,
            "phoenix {args:?} into a closed pipe:\n{stderr}"
        );
        assert!(
            stderr.is_empty(),
            "phoenix {args:?} into a closed pipe says nothing:\n{stderr}"
        );
    }
}

/// The AWS example environment did not validate: its directory and its `metadata.name` differed (ebc931d, which
/// renamed it environments/shop-prod). Every environment shipped in the repository validates with its templates.
#[test]
fn every_environment_shipped_in_the_repository_validates() {
    let sb = Sandbox::new();
    let repo = sb.repo("shipped");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in ["environments", "templates", "vendor"] {
        std::fs::create_dir_all(repo.dir.join(dir)).expect("mkdir");
        testkit::bed::copy_tree(&root.join(dir), &repo.dir.join(dir));
    }
    repo.commit("shipped environments");
    let mut names: Vec<String> = std::fs::read_dir(root.join("environments"))
        .expect("environments/")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("environment.yaml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 2, "{names:?}");
    for name in &names {
        let out = phoenix(&sb, &repo.dir, &["validate", name]);
        let (stdout, stderr) = text(&out);
        assert_eq!(
            code(&out),
            0,
            "{name}:\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
}

/// Templates are not auto-escaped (ee76d4f): minijinja JSON-escapes the output of templates named `*.yaml.j2` by
/// default, so `name: {{ env.name }}-web` rendered as `name: "s"-web`, which is not YAML, and a value with quotes
/// came out with backslashes. Templates quote explicitly (`| tojson`) where they need to.
#[test]
fn yaml_templates_render_values_as_written() {
    let sb = Sandbox::new();
    let repo = sb.repo("envs");
    repo.write(
        "environments/s/environment.yaml",
        "apiVersion: phoenix/v1\nkind: Environment\nmetadata: { name: s }\nspec:\n  values: { greeting: 'say \"hi\" & <bye>' }\n  cluster: { existing: { kubeconfig: /nonexistent } }\n  apps:\n    - { name: web, path: apps/web }\n",
    );
    repo.write(
        "environments/s/apps/web/cm.yaml.j2",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: {{ env.name }}-web, namespace: default }\ndata:\n  greeting: {{ values.greeting | tojson }}\n  plain: x{{ values.greeting }}x\n",
    );
    repo.commit("a template with values");
    let out = phoenix(&sb, &repo.dir, &["render", "s"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(code(&out), 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for line in [
        "name: s-web",
        // render prints the parsed objects: the value, whatever quoting the template used.
        r#"greeting: say "hi" & <bye>"#,
        r#"plain: xsay "hi" & <bye>x"#,
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
}

/// rustls panicked when phoenix built its first TLS client ("no process-level CryptoProvider available"): the
/// build compiles in both ring (kube, phoenix) and aws-lc-rs (the AWS SDK), so rustls cannot choose one by itself
/// (3264f5c and f98278f: phoenix installs ring once per process). An existing cluster at an https address that
/// refuses connections is a connection error, not a panic.
#[test]
fn an_existing_cluster_over_https_is_reached_through_rustls_without_a_panic() {
    let sb = Sandbox::new();
    let server = format!("https://127.0.0.1:{}", refused_port());
    let repo = existing_cluster_repo(&sb, &server);
    let out = phoenix(&sb, &repo.dir, &["diff", "e"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(code(&out), 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("CryptoProvider"),
        "{stderr}"
    );
    // Past building the TLS client: the connection was tried.
    assert!(
        stdout.contains("Connection refused"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
}

/// A password in a repository URL is not shown (16b0210): errors and reports name the remote as
/// `scheme://user:***@host/...`; they once printed the URL as given.
#[test]
fn a_password_in_the_repository_url_is_not_shown() {
    let sb = Sandbox::new();
    let url = format!(
        "git://ci:hunter2-not-shown@127.0.0.1:{}/envs.git",
        refused_port()
    );
    let out = phoenix(&sb, &sb.home(), &["validate", "e", "--repo", &url]);
    let (stdout, stderr) = text(&out);
    assert_eq!(code(&out), 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        !stdout.contains("hunter2") && !stderr.contains("hunter2"),
        "the password is shown:\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stderr.contains("git://ci:***@127.0.0.1:"),
        "the remote is named without its password:\n{stderr}"
    );
}

/// A cluster asked for while its wiped predecessor is still stopping is a new, whole cluster: the wipe deletes
/// only the old one's keys (2f2db1c, in testenv/). It once deleted by name, so the new API server lost its
/// NodePort range and its `default` Namespace moments after it had written them; a rebuild right after a teardown
/// then failed on every NodePort Service for minutes (the kill-and-resume test failed in CI on `cannot allocate
/// resources of type servicenodeportallocations`). Fails with the testenv binary from before 2f2db1c.
#[test]
fn a_cluster_started_during_its_wipe_keeps_what_it_wrote() {
    let cp = ControlPlane::start();
    let url = cp.cluster_url("rewipe");
    std::thread::scope(|s| {
        let wipe = s.spawn(|| cp.wipe_cluster("rewipe"));
        std::thread::sleep(std::time::Duration::from_millis(50));
        cp.ensure("rewipe");
        assert!(
            wipe.join().expect("wipe thread"),
            "the first cluster was wiped"
        );
    });
    // The new cluster, once whatever the old one's stop was doing is over.
    let dir = tempfile::tempdir().expect("temp dir");
    let svc = dir.path().join("svc.yaml");
    std::fs::write(
        &svc,
        "apiVersion: v1\nkind: Service\nmetadata: { name: np, namespace: default }\nspec: { type: NodePort, selector: { app: np }, ports: [ { port: 80 } ] }\n",
    )
    .expect("write the manifest");
    let (ok, _, err) = control_plane::kubectl(&url, &["create", "-f", &svc.to_string_lossy()]);
    assert!(ok, "a NodePort Service in the restarted cluster: {err}");
    let (ok, out, err) =
        control_plane::kubectl(&url, &["get", "namespace", "default", "-o", "name"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "namespace/default");
}

/// Concurrent opens of one remote in one process share its mirror in `$PHOENIX_HOME/cache` (16b0210: cache
/// updates are serialized in-process: the watch agent and a command share a process). Unserialized, concurrent
/// fetches into the mirror fail on git's lock files (`HEAD.lock`, `refs/heads/main.lock`).
#[test]
fn concurrent_opens_of_one_remote_share_its_mirror() {
    let sb = Sandbox::new();
    let remote = sb.repo("remote");
    let mut sha = String::new();
    // The first round clones the mirror, the next ones fetch a new commit into it, each from eight threads.
    for round in 0..4 {
        remote.write("f", format!("round {round}\n"));
        sha = remote.commit(&format!("round {round}"));
        let opts = sb.options(remote.url());
        let results: Vec<Result<String, String>> = std::thread::scope(|s| {
            let opens: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        phoenix::source::open(&opts)
                            .map(|snap| snap.commit().sha.clone())
                            .map_err(|e| format!("{e} ({e:?})"))
                    })
                })
                .collect();
            opens
                .into_iter()
                .map(|o| o.join().expect("open thread"))
                .collect()
        });
        for result in results {
            assert_eq!(result.as_deref(), Ok(sha.as_str()), "round {round}");
        }
    }
    assert!(!sha.is_empty());
}
