//! minijinja over templates read from the commit: component manifests and instance user-data.
//!
//! Every `.j2` file under `templates/` and the environment directory is loaded from the commit
//! up front, so includes and imports resolve inside the commit and nothing touches the disk.

use super::secrets::{Mode, SecretValues};
use super::values::deep_merge;
use crate::env::load::CommitFiles;
use crate::env::model::{Component, Environment, InstanceGroup, Source};
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
    /// 1-based, in characters, where the failing expression or tag starts.
    pub column: Option<usize>,
    pub message: String,
}

impl From<RenderError> for crate::env::Diagnostic {
    /// A template that does not render, as `phoenix validate` reports it.
    fn from(e: RenderError) -> Self {
        crate::env::Diagnostic {
            file: e.file,
            line: e.line.unwrap_or(0),
            column: match (e.line, e.column) {
                (Some(_), Some(c)) => c,
                (Some(_), None) => 1,
                _ => 0,
            },
            field: String::new(),
            message: e.message,
            help: Some(
                "fix the template or the values it uses; `phoenix render ENV` shows the output"
                    .into(),
            ),
        }
    }
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {}", self.file, self.message),
            (Some(l), None) => write!(f, "{}:{l}: {}", self.file, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
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
    /// When it is applied within its component: `Main` but for a chart's Helm hooks.
    pub stage: super::Stage,
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
    /// Every template's text by path, to point errors at the failing expression.
    sources: std::sync::Arc<BTreeMap<String, String>>,
    env_values: serde_json::Value,
    shared_values: serde_json::Value,
    env_ctx: serde_json::Value,
    secrets: SecretValues,
    mode: Mode,
    /// Repo-relative directory of the environment (kustomize bases resolve inside it).
    env_dir: String,
    /// The env's data volumes: each instance's user-data mounts its own.
    volumes: Vec<crate::env::model::Volume>,
}

/// A minijinja error as a diagnostic: the file, the line and column where the failing expression
/// or tag starts (from the error's source range, so a filter's or a block's error points at the
/// expression, not where rendering gave up), and what failed in words, naming the expression.
fn jinja_error(
    default_file: &str,
    e: &JinjaError,
    sources: &BTreeMap<String, String>,
) -> RenderError {
    let file = e.name().unwrap_or(default_file).to_string();
    let source = sources.get(&file).map(String::as_str);
    let spot = e
        .range()
        .zip(source)
        .filter(|(r, src)| r.start <= r.end && r.end <= src.len())
        .and_then(|(r, src)| {
            // A filter's error spans only the filter's name: widen it to the whole `{{ ... }}`
            // expression around it, which names the value.
            enclosing_expression(src, r.start).or_else(|| src.get(r.clone()).map(|t| (r.start, t)))
        });
    let (mut line, mut column) = match (spot, source) {
        (Some((start, _)), Some(src)) => {
            let (l, c) = line_column(src, start);
            (Some(l), Some(c))
        }
        _ => (e.line(), None),
    };
    let expr = spot.map(|(_, text)| text.trim());
    let detail = e.detail().map(str::to_string);
    let message = match e.kind() {
        ErrorKind::UndefinedError => match expr.map(variable_of) {
            Some(var) if !var.is_empty() => format!(
                "undefined variable `{var}` (in `{}`); define it in values, or use `| default(...)`",
                expr.unwrap_or_default()
            ),
            _ => "undefined variable".to_string(),
        },
        ErrorKind::OutOfFuel => "template does too much work (fuel exhausted)".to_string(),
        ErrorKind::SyntaxError => {
            let unclosed = source
                .filter(|_| detail.as_deref().is_some_and(|d| d.contains("end of input")))
                .and_then(unclosed_block);
            match unclosed {
                Some(open) => {
                    line = Some(open.line);
                    column = Some(open.column);
                    format!(
                        "template syntax error: `{{% {} %}}` is never closed (expected `{{% end{} %}}`)",
                        open.tag, open.name
                    )
                }
                None => match &detail {
                    Some(d) => format!("template syntax error: {d}"),
                    None => "template syntax error".to_string(),
                },
            }
        }
        ErrorKind::TemplateNotFound => match &detail {
            Some(d) => format!("template not found: {d}"),
            None => "template not found".to_string(),
        },
        other => {
            let what = match expr {
                Some(x) if !x.is_empty() => format!("{other} in `{x}`"),
                _ => other.to_string(),
            };
            match &detail {
                Some(d) => format!("{what}: {d}"),
                None => what,
            }
        }
    };
    RenderError {
        file,
        line,
        column,
        message,
    }
}

/// The `{{ ... }}` expression of `src` that contains byte offset `at`: its start offset and its
/// text without the delimiters and whitespace control.
fn enclosing_expression(src: &str, at: usize) -> Option<(usize, &str)> {
    let open = src.get(..at)?.rfind("{{")?;
    // The expression must not have closed before `at`.
    if src[open..at].contains("}}") {
        return None;
    }
    let close = open + src[open..].find("}}")?;
    let inner = &src[open + 2..close];
    let lead = inner.len() - inner.trim_start_matches(['-', '+', ' ', '\t', '\n']).len();
    let text = inner[lead..].trim_end_matches(['-', '+', ' ', '\t', '\n']);
    Some((open + 2 + lead, text))
}

/// 1-based line and column (in characters) of byte offset `at` in `src`.
fn line_column(src: &str, at: usize) -> (usize, usize) {
    let before = &src[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The variable an expression starts with: `values.domian` of `values.domian | to_json`.
fn variable_of(expr: &str) -> String {
    let expr = expr
        .trim_start_matches("{{")
        .trim_start_matches('-')
        .trim_start();
    let mut out = String::new();
    let mut chars = expr.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_alphanumeric() || c == '_' || c == '.' {
            out.push(c);
            chars.next();
        } else if c == '[' {
            // `values["a-b"]` keeps its subscript.
            for c in chars.by_ref() {
                out.push(c);
                if c == ']' {
                    break;
                }
            }
        } else {
            break;
        }
    }
    out.trim_end_matches('.').to_string()
}

/// A block tag that opens and was never closed.
#[derive(Debug, PartialEq, Eq)]
struct OpenBlock {
    name: String,
    tag: String,
    line: usize,
    column: usize,
}

/// The innermost block tag of `src` left open at the end, by a scan of `{% ... %}` tags (comments
/// and raw blocks skipped). minijinja reports an unclosed block at the end of input; the user
/// needs where it opens.
fn unclosed_block(src: &str) -> Option<OpenBlock> {
    const BLOCKS: [&str; 9] = [
        "if",
        "for",
        "block",
        "macro",
        "call",
        "filter",
        "with",
        "autoescape",
        "raw",
    ];
    let mut stack: Vec<OpenBlock> = Vec::new();
    let mut rest = 0;
    while let Some(found) = src[rest..].find("{%").map(|i| rest + i) {
        if let Some(comment) = src[rest..found].find("{#") {
            // Skip a comment that starts before this tag.
            let from = rest + comment;
            rest = src[from..].find("#}").map_or(src.len(), |i| from + i + 2);
            continue;
        }
        let Some(close) = src[found..].find("%}").map(|i| found + i) else {
            break;
        };
        let inner =
            src[found + 2..close].trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        let word: String = inner
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        rest = close + 2;
        let is_set_block = word == "set" && !inner.contains('=');
        if BLOCKS.contains(&word.as_str()) || is_set_block {
            let (line, column) = line_column(src, found);
            stack.push(OpenBlock {
                name: word.clone(),
                tag: inner.to_string(),
                line,
                column,
            });
            if word == "raw" {
                // Nothing inside a raw block is a tag.
                match src[rest..].find("endraw") {
                    Some(i) => {
                        stack.pop();
                        rest += i + "endraw".len();
                    }
                    None => break,
                }
            }
        } else if let Some(name) = word.strip_prefix("end") {
            if let Some(pos) = stack.iter().rposition(|b| b.name == name) {
                stack.truncate(pos);
            }
        }
    }
    stack.pop()
}

fn read_values(files: &dyn CommitFiles, path: &str) -> Result<serde_json::Value, RenderError> {
    if !files.is_file(path) {
        return Ok(json!({}));
    }
    let err = |line, message| RenderError {
        file: path.to_string(),
        line,
        column: None,
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
                        column: None,
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
                    column: None,
                    message: format!("template syntax configuration: {e}"),
                })?,
        );
        jinja.add_filter("b64encode", |s: String| base64_encode(s.as_bytes()));
        // Strict: printing an undefined value is an error, and so is printing none (a key that is
        // present and empty, e.g. a field indented into the wrong mapping), which would render
        // as the word "none".
        jinja.set_formatter(|out, state, value| {
            if value.is_undefined() {
                return Err(JinjaError::new(ErrorKind::UndefinedError, "undefined value"));
            }
            if value.is_none() {
                return Err(JinjaError::new(
                    ErrorKind::InvalidOperation,
                    "the value is none (null) and would print as \"none\"; give it a value, or use `| default(...)`",
                ));
            }
            minijinja::escape_formatter(out, state, value)
        });
        jinja.add_filter("to_json", |v: Value| {
            if v.is_undefined() {
                return Err(JinjaError::new(
                    ErrorKind::UndefinedError,
                    "undefined value",
                ));
            }
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
        let sources = std::sync::Arc::new(sources);
        let loaded = std::sync::Arc::clone(&sources);
        // Includes name templates by repo path, or by path under templates/.
        jinja.set_loader(move |name: &str| {
            let sources = &loaded;
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
            sources,
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
            env_dir: env.dir.clone(),
            volumes: env.volumes.clone(),
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
            .map_err(|e| jinja_error(name, &e, &self.sources))?;
        let mut ctx = ctx.clone();
        ctx["secrets"] = serde_json::to_value(self.secrets.as_map()).unwrap_or_default();
        tmpl.render(Value::from(minijinja::value::Serde(&ctx)))
            .map_err(|e| jinja_error(name, &e, &self.sources))
    }

    /// Renders `.j2` files and copies plain `.yaml`/`.yml`/`.json` files of a component, in path
    /// order. `values.yaml` (defaults) and files starting with `_` (partials) are not output.
    pub fn component(
        &self,
        files: &dyn CommitFiles,
        comp: &Component,
    ) -> Result<Vec<RenderedFile>, RenderError> {
        let (out, mut errors) = self.component_all(files, comp);
        match errors.is_empty() {
            true => Ok(out),
            false => Err(errors.swap_remove(0)),
        }
    }

    /// [`Renderer::component`] with every problem: each file is rendered even after another failed.
    fn component_all(
        &self,
        files: &dyn CommitFiles,
        comp: &Component,
    ) -> (Vec<RenderedFile>, Vec<RenderError>) {
        match &comp.source {
            Source::Chart(chart) => {
                let rendered = self
                    .chart_values(files, comp)
                    .and_then(|values| super::chart::render_chart(files, comp, chart, &values));
                return match rendered {
                    Ok(out) => (out, Vec::new()),
                    Err(e) => (Vec::new(), vec![e]),
                };
            }
            Source::Kustomize(_) => {
                return match super::chart::render_kustomize(files, comp, &self.env_dir) {
                    Ok(out) => (out, Vec::new()),
                    Err(e) => (Vec::new(), vec![e]),
                };
            }
            Source::Template(_) | Source::Path(_) => {}
        }
        let mut errors = Vec::new();
        let values = match self.values_for(files, Some(comp)) {
            Ok(v) => v,
            Err(e) => return (Vec::new(), vec![e]),
        };
        let ctx = json!({
            "env": self.env_ctx,
            "values": values,
            "component": { "name": comp.name, "namespace": comp.namespace },
        });
        let paths = match files.files_under(&comp.source_dir) {
            Ok(paths) => paths,
            Err(m) => {
                let e = RenderError {
                    file: comp.source_dir.clone(),
                    line: None,
                    column: None,
                    message: m,
                };
                return (Vec::new(), vec![e]);
            }
        };
        let mut out = Vec::new();
        for path in paths {
            let base = path.rsplit('/').next().unwrap_or(&path);
            if base.starts_with('_') || base == "values.yaml" {
                continue;
            }
            if path.ends_with(".j2") {
                match self.render(&path, &ctx) {
                    Ok(content) => out.push(RenderedFile {
                        content,
                        source: path,
                    }),
                    Err(e) => errors.push(e),
                }
            } else if [".yaml", ".yml", ".json"]
                .iter()
                .any(|ext| path.ends_with(ext))
            {
                match files.read_text(&path) {
                    Ok(content) => out.push(RenderedFile {
                        source: path,
                        content,
                    }),
                    Err(m) => errors.push(RenderError {
                        file: path.clone(),
                        line: None,
                        column: None,
                        message: m,
                    }),
                }
            }
        }
        (out, errors)
    }

    /// A chart's values: the component's `values`, each string rendered as a template (with
    /// `env`, the environment's `values` and `secrets`), so `"{{ secrets.db }}"` passes a secret
    /// to the chart (through a private file, see [`super::chart::render_chart`]).
    fn chart_values(
        &self,
        files: &dyn CommitFiles,
        comp: &Component,
    ) -> Result<serde_json::Value, RenderError> {
        let ctx = json!({
            "env": self.env_ctx,
            "values": self.values_for(files, None)?,
            "component": { "name": comp.name, "namespace": comp.namespace },
            "secrets": serde_json::to_value(self.secrets.as_map()).unwrap_or_default(),
        });
        let file = format!("component {} values", comp.name);
        self.render_strings(&comp.values, &ctx, &file)
    }

    fn render_strings(
        &self,
        v: &serde_json::Value,
        ctx: &serde_json::Value,
        file: &str,
    ) -> Result<serde_json::Value, RenderError> {
        use serde_json::Value as J;
        Ok(match v {
            J::String(s) if s.contains("{{") || s.contains("{%") => {
                let out = self
                    .jinja
                    .render_str(s, Value::from(minijinja::value::Serde(ctx)))
                    .map_err(|e| RenderError {
                        file: file.to_string(),
                        line: None,
                        column: None,
                        message: format!(
                            "cannot render {s:?}: {}",
                            e.detail().unwrap_or(&e.kind().to_string())
                        ),
                    })?;
                J::String(out)
            }
            J::Array(a) => J::Array(
                a.iter()
                    .map(|x| self.render_strings(x, ctx, file))
                    .collect::<Result<_, _>>()?,
            ),
            J::Object(m) => J::Object(
                m.iter()
                    .map(|(k, x)| Ok((k.clone(), self.render_strings(x, ctx, file)?)))
                    .collect::<Result<_, RenderError>>()?,
            ),
            other => other.clone(),
        })
    }

    /// What a chart's or a kustomization's output must satisfy before phoenix applies it: Helm
    /// test hooks are dropped; install/upgrade hooks get their stage (see [`super::Stage`]);
    /// other hooks are refused; a secret value the chart's values carry may appear only in a Secret's data;
    /// a Secret's `stringData` is folded into `data` (as the API server does, so it never reads
    /// as drift).
    fn check_tool_output(
        &self,
        files: &dyn CommitFiles,
        comp: &Component,
        out: &mut Vec<Manifest>,
        errors: &mut Vec<RenderError>,
    ) {
        // The secrets whose values the chart was given, however its values referred to them:
        // every string the rendered values hold is searched for each secret's value.
        let given: String = match &comp.source {
            Source::Chart(_) => {
                let mut strings = Vec::new();
                if let Ok(values) = self.chart_values(files, comp) {
                    collect_strings(&values, &mut strings);
                }
                strings.join("\n")
            }
            _ => String::new(),
        };
        let used: Vec<(&str, &str)> = self
            .secrets
            .names()
            .filter_map(|n| self.secrets.get(n).map(|v| (n, v)))
            .filter(|(_, v)| !v.is_empty() && given.contains(*v))
            .collect();
        let mut kept = Vec::with_capacity(out.len());
        for mut m in out.drain(..) {
            match super::hooks::classify(&m.object["metadata"]["annotations"]) {
                Ok(super::hooks::Hook::Test) => continue,
                Ok(super::hooks::Hook::Apply(stage)) => m.stage = stage,
                Err(why) => {
                    errors.push(RenderError {
                        file: m.source.clone(),
                        line: None,
                        column: None,
                        message: format!("{} {} {why}", m.kind(), m.name()),
                    });
                    continue;
                }
            }
            if m.kind() == "Secret" && m.api_version() == "v1" {
                if let Some(sd) = m.object.get_mut("stringData").map(serde_json::Value::take) {
                    if let Some(map) = m.object.as_object_mut() {
                        map.remove("stringData");
                    }
                    let data = m.object["data"].take();
                    let mut data = data.as_object().cloned().unwrap_or_default();
                    for (k, v) in sd.as_object().into_iter().flatten() {
                        let text = v
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string());
                        data.insert(k.clone(), json!(base64_encode(text.as_bytes())));
                    }
                    m.object["data"] = serde_json::Value::Object(data);
                }
            }
            if self.mode == Mode::Display && m.kind() == "Secret" {
                // As for spec.secrets: a redaction marker is shown as such, not as base64.
                use base64::Engine as _;
                if let Some(data) = m.object["data"].as_object_mut() {
                    for v in data.values_mut() {
                        let decoded = v
                            .as_str()
                            .and_then(|t| base64::engine::general_purpose::STANDARD.decode(t).ok())
                            .and_then(|b| String::from_utf8(b).ok());
                        if let Some(text) = decoded.filter(|t| t.contains(super::REDACTED)) {
                            *v = json!(text);
                        }
                    }
                }
            }
            let mut outside = m.object.clone();
            if m.kind() == "Secret" {
                if let Some(map) = outside.as_object_mut() {
                    map.remove("data");
                }
            }
            let text = outside.to_string();
            if let Some((name, _)) = used
                .iter()
                .find(|(_, v)| text.contains(*v) || text.contains(&base64_encode(v.as_bytes())))
            {
                errors.push(RenderError {
                    file: m.source.clone(),
                    line: None,
                    column: None,
                    message: format!(
                        "the value of secret {name:?} reaches {} {} outside a Secret's data: refused (a secret value may go only into a Secret's data, where phoenix redacts it)",
                        m.kind(),
                        m.name()
                    ),
                });
                continue;
            }
            kept.push(m);
        }
        *out = kept;
    }

    /// The component's Kubernetes objects: rendered files split into documents, plus the Secrets
    /// it declares from secret references.
    pub fn manifests(
        &self,
        files: &dyn CommitFiles,
        comp: &Component,
    ) -> Result<Vec<Manifest>, RenderError> {
        self.manifests_all(files, comp)
            .map_err(|mut errors| errors.swap_remove(0))
    }

    /// [`Renderer::manifests`] with every problem of the component at once (never an empty
    /// error list): every file is rendered and parsed even after another failed.
    pub fn manifests_all(
        &self,
        files: &dyn CommitFiles,
        comp: &Component,
    ) -> Result<Vec<Manifest>, Vec<RenderError>> {
        let mut out = Vec::new();
        let (rendered, mut errors) = self.component_all(files, comp);
        for f in rendered {
            let docs = match yaml::parse_documents(&f.content) {
                Ok(docs) => docs,
                Err(e) => {
                    errors.push(RenderError {
                        file: f.source.clone(),
                        line: Some(e.pos.line),
                        column: None,
                        message: format!("rendered output is not valid YAML: {}", e.message),
                    });
                    continue;
                }
            };
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
                    errors.push(RenderError {
                        file: f.source.clone(),
                        line: Some(doc.pos.line),
                        column: None,
                        message,
                    });
                    continue;
                }
                out.push(Manifest {
                    source: f.source.clone(),
                    line: doc.pos.line,
                    object,
                    stage: super::Stage::Main,
                });
            }
        }
        if matches!(comp.source, Source::Chart(_) | Source::Kustomize(_)) {
            self.check_tool_output(files, comp, &mut out, &mut errors);
        }
        for s in &comp.secrets {
            let mut data = serde_json::Map::new();
            for (key, secret) in &s.data {
                let Some(value) = self.secrets.get(secret) else {
                    errors.push(RenderError {
                        file: comp.source_dir.clone(),
                        line: Some(s.pos.line),
                        column: None,
                        message: format!("secret {secret:?} is not declared in spec.secrets"),
                    });
                    continue;
                };
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
                stage: super::Stage::Main,
            });
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
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
        // Only what the mount needs: a volume's id is not known when the user-data is rendered
        // (a restore creates a new one), and the user-data must not change when it does.
        let volumes: Vec<serde_json::Value> = self
            .volumes
            .iter()
            .filter_map(|v| v.attachment().map(|a| (v, a)))
            .filter(|(_, a)| a.group == group.name && a.index == index)
            .map(|(v, a)| {
                json!({
                    "name": v.name,
                    "device": a.device,
                    "mount_path": a.mount_path,
                    "filesystem": v.filesystem.as_str(),
                })
            })
            .collect();
        let ctx = json!({
            "env": self.env_ctx,
            "values": values,
            "instance": {
                "group": group.name,
                "index": index,
                "role": group.role,
                "volumes": volumes,
                "name": format!("{}-{}-{}", self.env_ctx["name"].as_str().unwrap_or(""), group.name, index),
            },
            "cluster": cluster,
        });
        self.render(&path, &ctx)
    }
}

/// Every string of a JSON value, keys included.
fn collect_strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                out.push(k.clone());
                collect_strings(x, out);
            }
        }
        _ => {}
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

    fn render_errors(tmpl: &str, extra: &[(&str, &str)]) -> Vec<RenderError> {
        let mut f = files(tmpl);
        for (path, text) in extra {
            f = f.with(path, text);
        }
        let env = crate::env::load(&f, "t").unwrap();
        let r = Renderer::new(&f, &env, "t", SecretValues::redacted(&env), Mode::Display).unwrap();
        r.manifests_all(&f, &env.addons[0]).unwrap_err()
    }

    #[test]
    fn an_undefined_value_through_a_filter_is_an_error_naming_it_with_line_and_column() {
        let e = render_errors(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata:\n  domain: {{ values.domian | to_json }}\n",
            &[],
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].file, "templates/web/deploy.yaml.j2");
        assert_eq!((e[0].line, e[0].column), (Some(5), Some(14)), "{}", e[0]);
        assert!(e[0].message.contains("`values.domian`"), "{}", e[0]);
    }

    #[test]
    fn printing_none_is_an_error_naming_the_expression() {
        // The component has no namespace (say it was indented into `values:`).
        let e = render_errors(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {{ component.namespace }}\n",
            &[],
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!((e[0].line, e[0].column), (Some(4), Some(12)), "{}", e[0]);
        assert!(
            e[0].message.contains("component.namespace") && e[0].message.contains("none"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn an_unclosed_block_is_reported_where_it_opens() {
        let e = render_errors(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n{% if values.replicas %}\ndata: {a: b}\n{% for x in [1] %}{% endfor %}\n",
            &[],
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!((e[0].line, e[0].column), (Some(4), Some(1)), "{}", e[0]);
        assert!(
            e[0].message
                .contains("`{% if values.replicas %}` is never closed"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn every_problem_of_a_component_is_reported_at_once() {
        let e = render_errors(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: {{ values.nope }}}\n",
            &[
                ("templates/web/other.yaml.j2", "{% if true %}\n"),
                ("templates/web/third.yaml.j2", "kind: ConfigMap\n"),
            ],
        );
        let files: Vec<&str> = e.iter().map(|e| e.file.as_str()).collect();
        assert_eq!(
            files,
            [
                "templates/web/deploy.yaml.j2",
                "templates/web/other.yaml.j2",
                "templates/web/third.yaml.j2"
            ],
            "{e:?}"
        );
    }

    #[test]
    fn unclosed_block_scan() {
        let open = unclosed_block("{# {% if %} #}\n{% raw %}{% for %}{% endraw %}\n  {%- for a in b %}{% if c %}{% endif %}")
            .unwrap();
        assert_eq!((open.name.as_str(), open.line, open.column), ("for", 3, 3));
        assert_eq!(unclosed_block("{% set x = 1 %}{% if a %}{% endif %}"), None);
        assert_eq!(
            unclosed_block("{% set x %}abc").map(|b| b.name),
            Some("set".to_string())
        );
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
