//! The corpus of environment definitions under `tests/fixtures`.
//!
//! Every directory under `tests/fixtures/invalid/` is a small repository tree
//! (`environments/<name>/environment.yaml` plus whatever templates or manifests the case needs)
//! and an `expected` file listing every diagnostic the loader must report, one per line:
//!
//! ```text
//! LINE:COLUMN FIELD | message substring
//! LINE:COLUMN FIELD | message substring | help substring
//! ```
//!
//! FIELD may be empty for a diagnostic about the whole file. Lines starting with `#` and blank
//! lines are ignored. Each expected diagnostic must be present with exactly that line, column and
//! field, and no other diagnostic may be reported. Every diagnostic must carry a help line
//! saying what would be valid. Every directory under `tests/fixtures/valid/`
//! must load with no diagnostic at all.
//!
//! Set `PHOENIX_CORPUS_DUMP=1` to print what the loader actually reports for each case, in the
//! format of `expected`.

use phoenix::env::{load, CommitFiles, Diagnostic};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Component, Path, PathBuf};

/// A commit read from a fixture directory on disk. Paths are repo-relative with `/`; anything
/// that could leave the fixture directory (absolute paths, `..`, backslashes, NUL, symlinks) is
/// refused.
struct DirFiles {
    root: PathBuf,
}

impl DirFiles {
    fn new(root: &Path) -> Self {
        DirFiles {
            root: root.canonicalize().expect("fixture directory exists"),
        }
    }

    /// The on-disk path of a repo-relative path, or why it is refused.
    fn locate(&self, path: &str) -> Result<PathBuf, String> {
        if path.is_empty()
            || path.starts_with('/')
            || path.contains('\\')
            || path.contains('\0')
            || path.contains(':')
        {
            return Err(format!("{path:?} is not a repo-relative path"));
        }
        let rel = Path::new(path);
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(format!("{path:?} leaves the repository"));
        }
        // Refuse symlinks on every step, so nothing resolves outside the fixture directory.
        let mut full = self.root.clone();
        for part in rel.components() {
            full.push(part);
            match fs::symlink_metadata(&full) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(format!("{path:?} goes through a symlink"))
                }
                Ok(_) => {}
                Err(_) => return Err(format!("{path} does not exist in the commit")),
            }
        }
        if !full.starts_with(&self.root) {
            return Err(format!("{path:?} leaves the repository"));
        }
        Ok(full)
    }

    fn walk(&self, dir: &Path, rel: &str, out: &mut Vec<String>) -> Result<(), String> {
        let entries = fs::read_dir(dir).map_err(|e| format!("{rel}: {e}"))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{rel}: {e}"))?;
            let name = entry
                .file_name()
                .into_string()
                .map_err(|_| format!("{rel} holds a file name that is not UTF-8"))?;
            let child = format!("{rel}/{name}");
            let kind = entry.file_type().map_err(|e| format!("{child}: {e}"))?;
            if kind.is_dir() {
                self.walk(&entry.path(), &child, out)?;
            } else if kind.is_file() {
                out.push(child);
            }
        }
        Ok(())
    }
}

impl CommitFiles for DirFiles {
    fn read_text(&self, path: &str) -> Result<String, String> {
        let full = self.locate(path)?;
        if !full.is_file() {
            return Err(format!("{path} is not a file in the commit"));
        }
        let bytes = fs::read(&full).map_err(|e| format!("{path}: {e}"))?;
        String::from_utf8(bytes).map_err(|_| format!("{path} is not valid UTF-8"))
    }

    fn is_file(&self, path: &str) -> bool {
        self.locate(path).is_ok_and(|p| p.is_file())
    }

    fn is_dir(&self, path: &str) -> bool {
        self.locate(path).is_ok_and(|p| p.is_dir())
    }

    fn files_under(&self, dir: &str) -> Result<Vec<String>, String> {
        let full = self.locate(dir.trim_end_matches('/'))?;
        let mut out = Vec::new();
        self.walk(&full, dir.trim_end_matches('/'), &mut out)?;
        out.sort();
        Ok(out)
    }
}

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(kind);
    let mut cases: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("readable fixture directory").path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    cases
}

/// The single environment a case defines: the one directory under `environments/`.
fn env_name(case: &Path) -> String {
    let mut names: Vec<String> = fs::read_dir(case.join("environments"))
        .unwrap_or_else(|e| panic!("{}: no environments/: {e}", case.display()))
        .map(|e| {
            e.expect("readable")
                .file_name()
                .into_string()
                .expect("UTF-8")
        })
        .collect();
    assert_eq!(
        names.len(),
        1,
        "{}: a case defines exactly one environment, found {names:?}",
        case.display()
    );
    names.remove(0)
}

#[derive(Debug)]
struct Expected {
    line: usize,
    column: usize,
    field: String,
    message: String,
    help: Option<String>,
    text: String,
}

impl Expected {
    fn matches(&self, d: &Diagnostic) -> bool {
        d.line == self.line
            && d.column == self.column
            && d.field == self.field
            && d.message.contains(&self.message)
            && self
                .help
                .as_ref()
                .is_none_or(|h| d.help.as_deref().is_some_and(|dh| dh.contains(h.as_str())))
    }
}

fn parse_expected(case: &Path) -> Vec<Expected> {
    let path = case.join("expected");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let where_ = format!("{}:{}: cannot parse {raw:?}", path.display(), n + 1);
        let mut parts = line.splitn(3, " | ");
        let head = parts.next().expect("splitn yields one part");
        let message = parts.next().expect(&where_).trim().to_string();
        let help = parts.next().map(|h| h.trim().to_string());
        let (pos, field) = head.split_once(' ').unwrap_or((head, ""));
        let (l, c) = pos.split_once(':').expect(&where_);
        assert!(!message.is_empty(), "{where_}: empty message");
        out.push(Expected {
            line: l.parse().expect(&where_),
            column: c.parse().expect(&where_),
            field: field.trim().to_string(),
            message,
            help,
            text: line.to_string(),
        });
    }
    out
}

fn show(d: &Diagnostic) -> String {
    let mut s = format!("{}:{} {} | {}", d.line, d.column, d.field, d.message);
    if let Some(h) = &d.help {
        s.push_str(&format!(" | {h}"));
    }
    s
}

/// Compares what the loader reports for one case with its `expected` file; returns the problems.
fn check_case(case: &Path) -> Vec<String> {
    let name = env_name(case);
    let file = format!("environments/{name}/environment.yaml");
    let expected = parse_expected(case);
    let mut problems = Vec::new();
    if expected.is_empty() {
        problems.push("the expected file lists no diagnostic".to_string());
    }
    let files = DirFiles::new(case);
    let diags = match load(&files, &name) {
        Ok(_) => {
            problems.push("loaded without any diagnostic".to_string());
            Vec::new()
        }
        Err(diags) => diags,
    };
    if std::env::var_os("PHOENIX_CORPUS_DUMP").is_some() {
        eprintln!("== {}", case.display());
        for d in &diags {
            eprintln!("{}", show(d));
        }
    }
    if diags.is_empty() && problems.is_empty() {
        problems.push("Err with no diagnostic".to_string());
    }
    let mut used = BTreeSet::new();
    for e in &expected {
        match (0..diags.len()).find(|i| !used.contains(i) && e.matches(&diags[*i])) {
            Some(i) => {
                used.insert(i);
            }
            None => problems.push(format!("missing: {}", e.text)),
        }
    }
    for (i, d) in diags.iter().enumerate() {
        if d.file != file {
            problems.push(format!("diagnostic names file {:?}, not {file:?}", d.file));
        }
        if d.message.trim().is_empty() {
            problems.push(format!("empty message: {}", show(d)));
        }
        // Every diagnostic says what would be valid, not only what is wrong.
        if d.help.as_deref().is_none_or(|h| h.trim().is_empty()) {
            problems.push(format!("no help line: {}", show(d)));
        }
        if !used.contains(&i) {
            problems.push(format!("unexpected: {}", show(d)));
        }
    }
    problems
}

#[test]
fn invalid_environments_report_every_expected_diagnostic() {
    let cases = fixtures("invalid");
    assert!(
        cases.len() >= 30,
        "the corpus holds {} invalid cases, at least 30 are required",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let problems = check_case(case);
        if !problems.is_empty() {
            let name = case.file_name().unwrap().to_string_lossy().into_owned();
            failures.push(format!("{name}:\n    {}", problems.join("\n    ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} invalid cases differ from their expected file:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn valid_environments_load_without_diagnostics() {
    let cases = fixtures("valid");
    assert!(!cases.is_empty(), "no valid fixtures");
    let mut failures = Vec::new();
    for case in &cases {
        let name = env_name(case);
        if let Err(diags) = load(&DirFiles::new(case), &name) {
            let shown: Vec<String> = diags.iter().map(show).collect();
            failures.push(format!("{}:\n    {}", case.display(), shown.join("\n    ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The fixture that exercises every field decodes into the values written in it.
#[test]
fn full_fixture_decodes_every_field() {
    use phoenix::env::model::*;
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/valid/every-field");
    let env = load(&DirFiles::new(&case), "every-field")
        .unwrap_or_else(|d| panic!("{}", d.iter().map(show).collect::<Vec<_>>().join("\n")));
    assert!(env.protected);
    assert_eq!(env.labels.get("team").map(String::as_str), Some("platform"));
    assert_eq!(
        env.recovery_objective,
        Some(std::time::Duration::from_secs(900))
    );
    assert_eq!(env.values["domain"], "every.example");
    assert_eq!(env.timeouts.cloud, std::time::Duration::from_secs(1200));
    assert_eq!(env.timeouts.apps, std::time::Duration::from_secs(90));
    assert_eq!(env.secrets.len(), 3);
    assert_eq!(
        env.secrets[1].source,
        SecretSource::File("every-field/db-password".into())
    );
    let cloud = env.cloud.as_ref().expect("cloud");
    assert_eq!(cloud.region, "eu-west-2");
    assert!(cloud.allow_stop_modify_start);
    assert_eq!(cloud.network.subnets.len(), 3);
    assert!(cloud.network.subnets[0].public);
    assert_eq!(cloud.security_groups.len(), 2);
    let cluster_sg = &cloud.security_groups[0];
    assert_eq!(cluster_sg.description, "k3s servers and agents");
    assert_eq!(cluster_sg.ingress.len(), 5);
    assert_eq!(cluster_sg.ingress[1].ports, Some((30000, 32767)));
    assert_eq!(cluster_sg.ingress[2].protocol, Protocol::Udp);
    assert_eq!(cluster_sg.ingress[3].ports, None);
    assert_eq!(cluster_sg.ingress[4].peer, Peer::Group("cluster".into()));
    let egress = cluster_sg.egress.as_ref().expect("egress");
    assert_eq!(egress.len(), 2);
    assert_eq!(egress[1].peer, Peer::Group("bastion".into()));
    assert_eq!(egress[1].ports, Some((22, 22)));
    let key = cloud.key_pair.as_ref().expect("key pair");
    assert_eq!(
        key.public_key,
        Some(SecretSource::Env("PHOENIX_SSH_KEY".into()))
    );
    assert_eq!(cloud.instances.len(), 3);
    let server = &cloud.instances[0];
    assert_eq!(server.role, Role::Server);
    assert_eq!(server.root_volume_gib, Some(40));
    assert_eq!(server.instance_profile.as_deref(), Some("phoenix-node"));
    assert_eq!(
        server.user_data.as_deref(),
        Some("cloud-init/k3s-server.yaml.j2")
    );
    assert_eq!(
        server.tags.get("cost-center").map(String::as_str),
        Some("42")
    );
    assert!(matches!(&cloud.instances[1].image, Image::Id(id) if id == "ami-0123456789abcdef0"));
    assert_eq!(cloud.instances[2].role, Role::None);
    match env.cluster.as_ref().expect("cluster") {
        Cluster::K3s(k) => {
            assert_eq!(k.version, "v1.31.4+k3s1");
            assert_eq!(k.endpoint, EndpointKind::Private);
            assert_eq!(
                k.secret,
                SecretSource::Env("PHOENIX_TEST_CLUSTER_SECRET".into())
            );
            assert_eq!(k.tls_sans, ["api.every-field.example", "203.0.113.10"]);
        }
        other => panic!("expected k3s, got {other:?}"),
    }
    assert_eq!(env.addons.len(), 2);
    assert_eq!(
        env.addons[0].source,
        Source::Template("addons/ingress-nginx".into())
    );
    assert_eq!(env.addons[0].source_dir, "templates/addons/ingress-nginx");
    assert!(env.addons[1].force_conflicts);
    assert_eq!(env.apps.len(), 2);
    let web = &env.apps[0];
    assert_eq!(web.source, Source::Path("apps/web".into()));
    assert_eq!(web.source_dir, "environments/every-field/apps/web");
    assert_eq!(web.namespace.as_deref(), Some("web"));
    assert_eq!(web.depends_on, vec!["ingress".to_string()]);
    assert_eq!(web.wait, std::time::Duration::from_secs(120));
    assert_eq!(web.checks.len(), 1);
    assert_eq!(web.checks[0].expect, 204);
    assert_eq!(web.secrets.len(), 1);
    assert_eq!(
        web.secrets[0].data.get("password").map(String::as_str),
        Some("db-password")
    );
    assert_eq!(web.values["replicas"], 2);
    // Defaults: the second app keeps the apps timeout as its wait.
    assert_eq!(env.apps[1].wait, std::time::Duration::from_secs(90));
}

#[test]
fn fixture_files_refuse_paths_outside_the_fixture() {
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/valid/every-field");
    let files = DirFiles::new(&case);
    assert!(files
        .read_text("environments/every-field/environment.yaml")
        .is_ok());
    for bad in [
        "../every-field/environments/every-field/environment.yaml",
        "environments/../../every-field/environments/every-field/environment.yaml",
        "environments/every-field/../../../../Cargo.toml",
        "/etc/passwd",
        "./environments/every-field/environment.yaml",
        "environments\\every-field\\environment.yaml",
        "environments/every-field/environment.yaml\0",
        "C:/Windows",
        "",
    ] {
        assert!(files.read_text(bad).is_err(), "{bad:?} was read");
        assert!(!files.is_file(bad), "{bad:?} is a file");
        assert!(!files.is_dir(bad), "{bad:?} is a directory");
        assert!(files.files_under(bad).is_err(), "{bad:?} was listed");
    }
    // A symlink inside the fixture that points outside it is refused too.
    let tmp = tempfile::tempdir().expect("temp dir");
    fs::create_dir_all(tmp.path().join("repo/environments")).unwrap();
    fs::write(tmp.path().join("outside.yaml"), "secret: 1\n").unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(
            tmp.path().join("outside.yaml"),
            tmp.path().join("repo/environments/link.yaml"),
        )
        .unwrap();
        std::os::unix::fs::symlink(tmp.path(), tmp.path().join("repo/up")).unwrap();
        let files = DirFiles::new(&tmp.path().join("repo"));
        assert!(files.read_text("environments/link.yaml").is_err());
        assert!(files.read_text("up/outside.yaml").is_err());
        assert!(!files.is_dir("up"));
        assert_eq!(
            files.files_under("environments").unwrap(),
            Vec::<String>::new()
        );
    }
}
