//! `phoenix vendor ENV`: every chart the environment names by repository URL, fetched into the
//! repository's working tree at `vendor/charts/NAME-VERSION.tgz` (the repository's index.yaml →
//! the chart's URL → the packaged chart), its sha256 checked against the digest the environment
//! declares. The user commits the files: `rebuild`, `plan` and `diff` read only the commit.

use crate::env::load::CommitFiles;
use crate::env::model::{ChartFrom, Environment, Source, VENDOR_DIR};
use crate::http::{ConnectorError, Roots};
use crate::render::chart::sha256_digest;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long one request (connect, headers and body) may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest index.yaml or packaged chart phoenix downloads.
const MAX_BYTES: usize = 64 << 20;
/// Redirects followed per request (chart repositories on GitHub Pages or S3 redirect).
const MAX_REDIRECTS: usize = 5;

/// The commit's files, with every vendored chart path counted as present: `vendor` loads an
/// environment whose charts are not vendored yet (that is what it is for).
pub struct AssumeVendored<'a>(pub &'a dyn CommitFiles);

impl CommitFiles for AssumeVendored<'_> {
    fn read_text(&self, path: &str) -> Result<String, String> {
        self.0.read_text(path)
    }
    fn is_file(&self, path: &str) -> bool {
        path.starts_with(&format!("{VENDOR_DIR}/")) || self.0.is_file(path)
    }
    fn is_dir(&self, path: &str) -> bool {
        self.0.is_dir(path)
    }
    fn files_under(&self, dir: &str) -> Result<Vec<String>, String> {
        self.0.files_under(dir)
    }
    fn read_bytes(&self, path: &str) -> Result<Vec<u8>, String> {
        self.0.read_bytes(path)
    }
    fn vendoring(&self) -> bool {
        true
    }
}

/// One repository chart of the environment and what vendoring it did.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Vendored {
    pub component: String,
    pub chart: String,
    pub version: String,
    /// Repo-relative path of the packaged chart.
    pub path: String,
    /// `fetched`, `unchanged` (already there with the declared digest) or `failed`.
    pub status: &'static str,
    /// The packaged chart's digest (what `chart.digest` must say).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Whether the environment declares no digest yet: the user adds `digest`.
    pub undeclared: bool,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Vendors every repository chart of `env` into the working tree at `root`. An error on one
/// chart does not stop the others; each is reported.
pub async fn vendor(env: &Environment, root: &Path) -> Vec<Vendored> {
    let mut out = Vec::new();
    for c in env.addons.iter().chain(&env.apps) {
        let Source::Chart(chart) = &c.source else {
            continue;
        };
        let ChartFrom::Repo {
            repo,
            name,
            version,
            digest,
        } = &chart.from
        else {
            continue;
        };
        let path = c.source_dir.clone();
        let target = root.join(&path);
        let mut v = Vendored {
            component: c.name.clone(),
            chart: name.clone(),
            version: version.clone(),
            path,
            status: "fetched",
            digest: None,
            undeclared: digest.is_empty(),
            error: None,
        };
        if !digest.is_empty() && std::fs::read(&target).is_ok_and(|b| &sha256_digest(&b) == digest)
        {
            v.status = "unchanged";
            v.digest = Some(digest.clone());
        } else {
            match fetch_chart(repo, name, version, digest, &target).await {
                Ok(found) => v.digest = Some(found),
                Err(e) => {
                    v.status = "failed";
                    v.error = Some(e);
                }
            }
        }
        out.push(v);
    }
    out
}

async fn fetch_chart(
    repo: &str,
    name: &str,
    version: &str,
    digest: &str,
    target: &PathBuf,
) -> Result<String, String> {
    let base = format!("{}/", repo.trim_end_matches('/'));
    let index_url = format!("{base}index.yaml");
    let index = get(&index_url).await?;
    let index = String::from_utf8(index).map_err(|_| format!("{index_url} is not UTF-8 text"))?;
    let node = crate::env::yaml::parse_one(&index).map_err(|e| {
        format!(
            "{index_url} is not valid YAML (line {}): {}",
            e.pos.line, e.message
        )
    })?;
    let doc = node.to_json();
    let entries = doc["entries"][name].as_array().ok_or_else(|| {
        format!("the chart repository {repo} has no chart named {name:?} (in {index_url})")
    })?;
    let entry = entries
        .iter()
        .find(|e| {
            let v = e["version"].as_str().unwrap_or("");
            v == version
                || v.strip_prefix('v') == Some(version)
                || version.strip_prefix('v') == Some(v)
        })
        .ok_or_else(|| {
            let known: Vec<&str> = entries
                .iter()
                .filter_map(|e| e["version"].as_str())
                .take(10)
                .collect();
            format!(
                "the chart repository {repo} has no version {version} of {name} (it has {})",
                known.join(", ")
            )
        })?;
    let url = entry["urls"][0]
        .as_str()
        .ok_or_else(|| format!("{index_url}: {name} {version} has no urls"))?;
    let chart_url = if url.contains("://") {
        url.to_string()
    } else {
        format!("{base}{}", url.trim_start_matches('/'))
    };
    let bytes = get(&chart_url).await?;
    let found = sha256_digest(&bytes);
    if let Some(listed) = entry["digest"].as_str() {
        if format!("sha256:{listed}") != found {
            return Err(format!(
                "{chart_url} has digest {found}, and the repository's index lists sha256:{listed}: refused, nothing written"
            ));
        }
    }
    // No digest declared yet: trusted on first use, checked against the index when it lists one,
    // and printed for the user to declare.
    if !digest.is_empty() && found != digest {
        return Err(format!(
            "{chart_url} has digest {found}, and the environment declares {digest}: refused, nothing written (if you trust this chart, set digest: {found})"
        ));
    }
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    // Written beside the target and renamed, so an interrupted run never leaves half a chart.
    let partial = target.with_extension("tgz.partial");
    std::fs::write(&partial, &bytes)
        .and_then(|()| std::fs::rename(&partial, target))
        .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
    Ok(found)
}

/// One GET with redirects followed, bounded by [`FETCH_TIMEOUT`] and [`MAX_BYTES`]: the body.
async fn get(url: &str) -> Result<Vec<u8>, String> {
    let connector = crate::http::connector(Roots::Native).map_err(|e| match e {
        ConnectorError::Roots(e) => format!("no system root certificates for https: {e}"),
        ConnectorError::Tls(e) => format!("cannot set up TLS: {e}"),
    })?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let fetch = async {
        let mut url = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let uri: hyper::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
            let resp = client
                .get(uri.clone())
                .await
                .map_err(|e| format!("GET {url}: {}", crate::error::chain(&e)))?;
            let status = resp.status();
            if status.is_redirection() {
                let location = resp
                    .headers()
                    .get(hyper::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| format!("GET {url}: {status} without a Location"))?;
                url = if location.contains("://") {
                    location.to_string()
                } else {
                    format!(
                        "{}://{}{location}",
                        uri.scheme_str().unwrap_or("https"),
                        uri.authority().map(|a| a.as_str()).unwrap_or("")
                    )
                };
                continue;
            }
            if !status.is_success() {
                return Err(format!("GET {url}: {status}"));
            }
            let body = Limited::new(resp.into_body(), MAX_BYTES)
                .collect()
                .await
                .map_err(|e| format!("GET {url}: reading the body: {e}"))?;
            return Ok(body.to_bytes().to_vec());
        }
        Err(format!("GET {url}: more than {MAX_REDIRECTS} redirects"))
    };
    tokio::time::timeout(FETCH_TIMEOUT, fetch)
        .await
        .map_err(|_| {
            format!(
                "GET {url}: no answer within {}",
                humantime::format_duration(FETCH_TIMEOUT)
            )
        })?
}
