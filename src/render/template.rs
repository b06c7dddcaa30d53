//! minijinja over templates read from the commit: component manifests and instance user-data.
//!
//! Every `.j2` file under `templates/` and the environment directory is loaded from the commit
//! up front, so includes and imports resolve inside the commit and nothing touches the disk.

use super::secrets::{Mode, SecretValues};
use super::values::deep_merge;
use crate::env::load::CommitFiles;
use crate::env::model::{Component, Environment, InstanceGroup};
use crate::env::yaml;
use minijinja::{Error as JinjaError, ErrorKind, UndefinedBehavior, Value};
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt;

/// Bounds template work, so a hostile template (a loop over range(10**9)) ends in an error.
const FUEL: u64 = 50_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for RenderError {}

/// One output file of a component or instance, rendered or copied.
#[derive(Debug, Clone)]
pub struct RenderedFile {
    pub source: String,
    pub content: String,
}

/// One Kubernetes object from a rendered file.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub source: String,
    pub line: usize,
    pub object: serde_json::Value,
}

impl Manifest {
    pub fn kind(&self) -> &str {
        self.object["kind"].as_str().unwrap_or("")
    }
    pub fn api_version(&self) -> &str {
        self.object["apiVersion"].as_str().unwrap_or("")
    }
    pub fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or("")
    }
    pub fn namespace(&self) -> Option<&str> {
        self.object["metadata"]["namespace"].as_str()
    }
}

pub struct Renderer {
    jinja: minijinja::Environment<'static>,
    env_values: serde_json::Value,
    shared_values: serde_json::Value,
    env_ctx: serde_json::Value,
    secrets: SecretValues,
    mode: Mode,
}

fn jinja_error(default_file: &str, e: &JinjaError) -> RenderError {
    let file = e.name().unwrap_or(default_file).to_string();
    let what = match e.kind() {
        ErrorKind::UndefinedError => "undefined variable".to_string(),
        ErrorKind::OutOfFuel => "template does too much work (fuel exhausted)".to_string(),
        ErrorKind::SyntaxError => "template syntax error".to_string(),
        ErrorKind::TemplateNotFound => "template not found".to_string(),
        other => other.to_string(),
    };
    let message = match e.detail() {
        Some(detail) => format!("{what}: {detail}"),
        None => what,
    };
    RenderError {
        file,
        line: e.line(),
        message,
    }
}

fn read_values(files: &dyn CommitFiles, path: &str) -> Result<serde_json::Value, RenderError> {
    if !files.is_file(path) {
        return Ok(json!({}));
    }
    let err = |line, message| RenderError {
        file: path.to_string(),
        line,
        message,
    };
    let text = files.read_text(path).map_err(|m| err(None, m))?;
    let node = yaml::parse_one(&text).map_err(|e| err(Some(e.pos.line), e.message))?;
    match node.to_json() {
        v @ serde_json::Value::Object(_) => Ok(v),
        serde_json::Value::Null => Ok(json!({})),
        _ => Err(err(Some(node.pos.line), "values must be a mapping".into())),
    }
}

impl Renderer {
    /// `effective_name` is the environment's name as deployed (a drill copy carries a suffix).
    pub fn new(
        files: &dyn CommitFiles,
        env: &Environment,
        effective_name: &str,
        secrets: SecretValues,
        mode: Mode,
    ) -> Result<Self, RenderError> {
        let mut sources: BTreeMap<String, String> = BTreeMap::new();
        for dir in ["templates", env.dir.as_str()] {
            for path in files.files_under(dir).unwrap_or_default() {
                if path.ends_with(".j2") {
                    let text = files.read_text(&path).map_err(|m| RenderError {
                        file: path.clone(),
                        line: None,
                        message: m,
                    })?;
                    sources.insert(path, text);
                }
            }
        }
        let mut jinja = minijinja::Environment::new();
        jinja.set_undefined_behavior(UndefinedBehavior::Strict);
        // minijinja JSON-escapes `*.yaml.j2` by default, which turns `name: {{ env.name }}-x` into
        // invalid YAML; templates quote explicitly (`| tojson`) where they need to.
        jinja.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        jinja.set_fuel(Some(FUEL));
        jinja.set_recursion_limit(64);
        // YAML documents and scripts end with a newline; keep it as written.
        jinja.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .keep_trailing_newline(true)
                .build()
                .map_err(|e| RenderError {
                    file: "templates".into(),
                    line: None,
                    message: format!("template syntax configuration: {e}"),
                })?,
        );
        jinja.add_filter("b64encode", |s: String| base64_encode(s.as_bytes()));
        jinja.add_filter("to_json", |v: Value| {
            serde_json::to_string(&v).map_err(|e| {
                JinjaError::new(
                    ErrorKind::InvalidOperation,
                    format!("cannot encode as JSON: {e}"),
                )
            })
        });
        jinja.add_filter("indent_lines", |s: String, n: usize| {
            let pad = " ".repeat(n.min(64));
            s.lines()
                .map(|l| format!("{pad}{l}"))
                .collect::<Vec<_>>()
                .join("\n")
        });
        // Includes name templates by repo path, or by path under templates/.
        jinja.set_loader(move |name: &str| {
            Ok(sources
                .get(name)
                .or_else(|| sources.get(&format!("templates/{name}")))
                .cloned())
        });
        let shared_values = read_values(files, "templates/values.yaml")?;
        let region = env
            .cloud
            .as_ref()
            .map(|c| c.region.clone())
            .unwrap_or_default();
        Ok(Renderer {
            jinja,
            env_values: env.values.clone(),
            shared_values,
            env_ctx: json!({
                "name": effective_name,
                "definition": env.name,
                "region": region,
                "labels": env.labels,
            }),
            secrets,
            mode,
        })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn values_for(
        &self,
        files: &dyn CommitFiles,
        comp: Option<&Component>,
    ) -> Result<serde_json::Value, RenderError> {
        let mut values = self.shared_values.clone();
        if let Some(c) = comp {
            if matches!(c.source, crate::env::model::Source::Template(_)) {
                deep_merge(
                    &mut values,
                    &read_values(files, &format!("{}/values.yaml", c.source_dir))?,
                );
            }
        }
        deep_merge(&mut values, &self.env_values);
        if let Some(c) = comp {
            deep_merge(&mut values, &c.values);
        }
        Ok(values)
    }

    fn render(&self, name: &str, ctx: &serde_json::Value) -> Result<String, RenderError> {
        let tmpl = self
            .jinja
            .get_template(name)
            .map_err(|e| jinja_error(name, &e))?;
        let mut ctx = ctx.clone();
        ctx["secrets"] = serde_json::to_value(self.secrets.as_map()).unwrap_or_default();
        tmpl.render(Value::from(minijinja::value::Serde(&ctx)))
            .map_err(|e| jinja_error(name, &e))
    }

    /// Renders `.j2` files and copies plain `.yaml`/`.yml`/`.json` files of a component, in path
    /// order. `values.yaml` (defaults) and files starting with `_` (partials) are not output.
    pub fn component(
        &self,
        files: &dyn CommitFiles,
        comp: &Component,
    ) -> Result<Vec<RenderedFile>, RenderError> {
        let values = self.values_for(files, Some(comp))?;
        let ctx = json!({
            "env": self.env_ctx,
            "values": values,
            "component": { "name": comp.name, "namespace": comp.namespace },
        });
        let paths = files
            .files_under(&comp.source_dir)
            .map_err(|m| RenderError {
                file: comp.source_dir.clone(),
                line: None,
                message: m,
            })?;
        let mut out = Vec::new();
        for path in paths {
            let base = path.rsplit('/').next().unwrap_or(&path);
            if base.starts_with('_') || base == "values.yaml" {
                continue;
            }
            if path.ends_with(".j2") {
                out.push(RenderedFile {
                    content: self.render(&path, &ctx)?,
                    source: path,
                });
            } else if [".yaml", ".yml", ".json"]
                .iter()
                .any(|ext| path.ends_with(ext))
            {
                let content = files.read_text(&path).map_err(|m| RenderError {
                    file: path.clone(),
                    line: None,
                    message: m,
                })?;
                out.push(RenderedFile {
                    source: path,
                    content,
                });
            }
        }
        Ok(out)
    }

    /// The component's Kubernetes objects: rendered files split into documents, plus the Secrets
    /// it declares from secret references.
    pub fn manifests(
        &self,
        files: &dyn CommitFiles,
        comp: &Component,
    ) -> Result<Vec<Manifest>, RenderError> {
        let mut out = Vec::new();
        for f in self.component(files, comp)? {
            let docs = yaml::parse_documents(&f.content).map_err(|e| RenderError {
                file: f.source.clone(),
                line: Some(e.pos.line),
                message: format!("rendered output is not valid YAML: {}", e.message),
            })?;
            for doc in docs {
                if doc.is_null() {
                    continue;
                }
                let object = doc.to_json();
                let problem = if !object.is_object() {
                    Some("a manifest must be a mapping".to_string())
                } else if object["apiVersion"].as_str().is_none_or(str::is_empty) {
                    Some("a manifest needs apiVersion".to_string())
                } else if object["kind"].as_str().is_none_or(str::is_empty) {
                    Some("a manifest needs kind".to_string())
                } else if object["metadata"]["name"]
                    .as_str()
                    .is_none_or(str::is_empty)
                {
                    Some("a manifest needs metadata.name".to_string())
                } else {
                    None
                };
                if let Some(message) = problem {
                    return Err(RenderError {
                        file: f.source.clone(),
                        line: Some(doc.pos.line),
                        message,
                    });
                }
                out.push(Manifest {
                    source: f.source.clone(),
                    line: doc.pos.line,
                    object,
                });
            }
        }
        for s in &comp.secrets {
            let mut data = serde_json::Map::new();
            for (key, secret) in &s.data {
                let value = self.secrets.get(secret).ok_or_else(|| RenderError {
                    file: comp.source_dir.clone(),
                    line: Some(s.pos.line),
                    message: format!("secret {secret:?} is not declared in spec.secrets"),
                })?;
                // `data`, not `stringData`: the API server folds stringData into data and
                // keeps no stringData, so applying it would read as drift on every diff.
                // Display output keeps the redaction marker readable.
                let encoded = match self.mode {
                    Mode::Apply => base64_encode(value.as_bytes()),
                    Mode::Display => value.to_string(),
                };
                data.insert(key.clone(), json!(encoded));
            }
            out.push(Manifest {
                source: format!("spec.secrets of component {}", comp.name),
                line: s.pos.line,
                object: json!({
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": { "name": s.name, "namespace": s.namespace },
                    "type": "Opaque",
                    "data": data,
                }),
            });
        }
        Ok(out)
    }

    /// User-data for one instance. `cluster` carries what the control-plane layer hands the
    /// instances (endpoint, join token, CA); it is merged into the context as `cluster`.
    pub fn user_data(
        &self,
        files: &dyn CommitFiles,
        template: &str,
        group: &InstanceGroup,
        index: u32,
        cluster: &serde_json::Value,
    ) -> Result<String, RenderError> {
        let values = self.values_for(files, None)?;
        let path = format!("templates/{template}");
        let ctx = json!({
            "env": self.env_ctx,
            "values": values,
            "instance": {
                "group": group.name,
                "index": index,
                "role": group.role,
                "name": format!("{}-{}-{}", self.env_ctx["name"].as_str().unwrap_or(""), group.name, index),
            },
            "cluster": cluster,
        });
        self.render(&path, &ctx)
    }
}

fn base64_encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::MemFiles;

    const ENV: &str = "apiVersion: phoenix/v1\nkind: Environment\nmetadata: {name: t}\nspec:\n  values: {replicas: 2}\n  secrets: [{name: db, from: env:PHOENIX_TEST_SECRET_DB}]\n  cluster: {existing: {kubeconfig: /dev/null}}\n  addons:\n    - {name: web, template: web, secrets: [{name: db, namespace: web, data: {password: db}}]}\n";

    fn files(tmpl: &str) -> MemFiles {
        MemFiles::default()
            .with("environments/t/environment.yaml", ENV)
            .with("templates/values.yaml", "image: nginx\nreplicas: 1\n")
            .with("templates/web/values.yaml", "port: 80\n")
            .with("templates/web/deploy.yaml.j2", tmpl)
    }

    #[test]
    fn values_merge_in_order_and_secrets_are_redacted() {
        let f = files("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: {{ component.name }}}\ndata: {image: {{ values.image }}, replicas: '{{ values.replicas }}', port: '{{ values.port }}', pw: '{{ secrets.db }}'}\n");
        let env = crate::env::load(&f, "t").unwrap();
        let r = Renderer::new(&f, &env, "t", SecretValues::redacted(&env), Mode::Display).unwrap();
        let m = r.manifests(&f, &env.addons[0]).unwrap();
        assert_eq!(m[0].object["data"]["image"], "nginx");
        assert_eq!(m[0].object["data"]["replicas"], "2");
        assert_eq!(m[0].object["data"]["port"], "80");
        assert!(
            m[0].object["data"]["pw"]
                .as_str()
                .unwrap()
                .starts_with("**redacted**"),
            "{}",
            m[0].object
        );
        assert_eq!(m[1].kind(), "Secret");
        assert!(m[1].object["data"]["password"]
            .as_str()
            .unwrap()
            .starts_with("**redacted**"));
    }

    #[test]
    fn undefined_variable_names_file_and_line() {
        let f = files("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ values.nope }}\n");
        let env = crate::env::load(&f, "t").unwrap();
        let r = Renderer::new(&f, &env, "t", SecretValues::redacted(&env), Mode::Display).unwrap();
        let e = r.manifests(&f, &env.addons[0]).unwrap_err();
        assert_eq!(e.file, "templates/web/deploy.yaml.j2");
        assert_eq!(e.line, Some(4));
        assert!(e.message.contains("undefined"), "{e}");
    }

    #[test]
    fn runaway_template_runs_out_of_fuel() {
        let f = files(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        );
        let env = crate::env::load(&f, "t").unwrap();
        let r = Renderer::new(&f, &env, "t", SecretValues::redacted(&env), Mode::Display).unwrap();
        let e = r.component(&f, &env.addons[0]).unwrap_err();
        assert!(
            e.message.contains("fuel") || e.message.contains("range"),
            "{e}"
        );
    }

    #[test]
    fn base64() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }
}
