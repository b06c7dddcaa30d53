//! HTTP layer: routing, request decoding, responses, watch streams and the admin endpoints.

use crate::api::{self, ResourceType};
use crate::cluster::{with_version, Cluster, DeleteOpts, Event, PatchType, WriteCtx};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::util::{meta_str, ApiError};
use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

const MAX_BODY: usize = 32 * 1024 * 1024;

/// Server-wide state shared by all connections.
pub struct Shared {
    pub clusters: std::sync::Mutex<HashMap<String, Arc<Cluster>>>,
    pub settings: crate::Settings,
    pub auth: Option<crate::tls::Auth>,
    pub tasks: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
    /// The runtime the sandbox runs on, so clusters can be created from any thread.
    pub rt: tokio::runtime::Handle,
}

impl Shared {
    /// The named cluster, created (with its static nodes and controller) on first use.
    pub fn cluster(self: &Arc<Self>, name: &str) -> Arc<Cluster> {
        let mut cs = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cs.get(name) {
            return c.clone();
        }
        let c = Cluster::new(
            name,
            &self.settings.kubernetes_version,
            self.settings.watch_history,
        );
        crate::controller::add_static_nodes(&c, self.settings.nodes);
        cs.insert(name.to_string(), c.clone());
        drop(cs);
        let h = self
            .rt
            .spawn(crate::controller::run(c.clone(), self.settings.clone()));
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(h.abort_handle());
        *c.controller.lock().unwrap_or_else(|e| e.into_inner()) = Some(h.abort_handle());
        c
    }

    /// Wipe a cluster: its objects, nodes and controller go; watches on it end. The next request (or EC2
    /// registration) creates it afresh. False when it does not exist.
    pub fn remove_cluster(&self, name: &str) -> bool {
        let removed = self
            .clusters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        match removed {
            Some(c) => {
                c.closed.store(true, std::sync::atomic::Ordering::Relaxed);
                if let Some(h) = c
                    .controller
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                {
                    h.abort();
                }
                true
            }
            None => false,
        }
    }

    pub fn existing(&self, name: &str) -> Option<Arc<Cluster>> {
        self.clusters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }
}

/// A body fed by a channel (watch streams).
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(b)) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed_unsync()
}

fn json_response(code: u16, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn ok_value(v: &Value) -> Response<Body> {
    json_response(200, serde_json::to_vec(v).unwrap_or_default())
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(
        e.code,
        serde_json::to_vec(&e.to_status()).unwrap_or_default(),
    )
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        m.insert(percent_decode(k), percent_decode(v));
    }
    m
}

struct Req {
    method: Method,
    path: String,
    query: HashMap<String, String>,
    content_type: String,
    user_agent: String,
    accept: String,
    /// How rows are returned when the client asked for a Table (None: plain objects).
    table: Option<crate::table::Include>,
    body: Bytes,
}

fn truthy(v: Option<&String>) -> bool {
    matches!(v.map(String::as_str), Some("1" | "true" | "True"))
}

/// Entry point for one HTTP request.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    cert_auth: bool,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    if let Some(auth) = &shared.auth {
        let public = matches!(
            path.as_str(),
            "/healthz" | "/readyz" | "/livez" | "/version"
        );
        let bearer = parts
            .headers
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim);
        if !public && !cert_auth && !auth.token_ok(bearer) {
            return Ok(error_response(&ApiError::new(
                401,
                "Unauthorized",
                "Unauthorized",
            )));
        }
    }
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    let body = match limited.collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return Ok(error_response(&ApiError::new(
                413,
                "RequestEntityTooLarge",
                "the request body is too large",
            )));
        }
    };
    let header = |n: &str| {
        parts
            .headers
            .get(n)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let started = std::time::Instant::now();
    let log_line = shared.settings.log_requests.then(|| {
        format!(
            "{} {}{}",
            parts.method,
            path,
            parts
                .uri
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default()
        )
    });
    let req = Req {
        method: parts.method.clone(),
        path,
        query: parse_query(parts.uri.query()),
        content_type: header("content-type"),
        user_agent: header("user-agent"),
        accept: header("accept"),
        table: crate::table::wants_table(&header("accept")).then(|| {
            crate::table::Include::parse(
                parse_query(parts.uri.query())
                    .get("includeObject")
                    .map(String::as_str),
            )
        }),
        body,
    };
    let resp = match route(&shared, req).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    if let Some(line) = log_line {
        eprintln!(
            "{line} -> {} ({:.1?})",
            resp.status().as_u16(),
            started.elapsed()
        );
    }
    Ok(resp)
}

async fn route(shared: &Arc<Shared>, req: Req) -> Result<Response<Body>, ApiError> {
    let path = req.path.trim_end_matches('/').to_string();
    if let Some(rest) = path.strip_prefix("/sandbox/") {
        return admin(shared, &req, rest);
    }
    let (cluster_name, rest) = match path.strip_prefix("/clusters/") {
        Some(r) => {
            let (name, rest) = r.split_once('/').unwrap_or((r, ""));
            if crate::util::validate_dns1123_subdomain(name).is_some() {
                return Err(ApiError::new(
                    404,
                    "NotFound",
                    format!("invalid cluster name {name:?}"),
                ));
            }
            (name.to_string(), format!("/{rest}"))
        }
        None => ("default".to_string(), path.clone()),
    };
    let rest = if rest.len() > 1 {
        rest.trim_end_matches('/').to_string()
    } else {
        rest
    };
    let cluster = shared.cluster(&cluster_name);
    match rest.as_str() {
        "/healthz" | "/readyz" | "/livez" | "/healthz/ping" | "/readyz/ping" | "/livez/ping" => {
            let mut r = Response::new(full("ok"));
            r.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return Ok(r);
        }
        "/version" => return Ok(ok_value(&version_doc(&cluster.version()))),
        "/api" | "/apis" if api::wants_aggregated(&req.accept) => {
            let st = cluster.lock();
            let doc = api::aggregated_discovery(&st.types, rest == "/api");
            drop(st);
            let mut r = ok_value(&doc);
            r.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static(api::AGGREGATED_CONTENT_TYPE),
            );
            return Ok(r);
        }
        "/api" => {
            return Ok(ok_value(&json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]
            })))
        }
        "/apis" => {
            let st = cluster.lock();
            return Ok(ok_value(&api::group_list(&st.types)));
        }
        _ => {}
    }
    if rest == "/openapi/v3" {
        let st = cluster.lock();
        return Ok(ok_value(&api::openapi_v3_root(&st.types)));
    }
    if let Some(gv) = rest.strip_prefix("/openapi/v3/") {
        let st = cluster.lock();
        return api::openapi_v3_gv(&st.types, gv, &cluster.version())
            .map(|d| ok_value(&d))
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                )
            });
    }
    if rest.starts_with("/openapi") {
        return Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    let segs: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let (group, version, tail): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api", "v1", tail @ ..] => ("", "v1", tail),
        ["apis", g] => {
            let st = cluster.lock();
            return api::group(&st.types, g)
                .map(|d| ok_value(&d))
                .ok_or_else(|| {
                    ApiError::new(
                        404,
                        "NotFound",
                        "the server could not find the requested resource",
                    )
                });
        }
        ["apis", g, v, tail @ ..] => (g, v, tail),
        _ => {
            return Err(ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ))
        }
    };
    if tail.is_empty() {
        let st = cluster.lock();
        return api::resource_list(&st.types, group, version)
            .map(|d| ok_value(&d))
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                )
            });
    }
    // Resolve [namespaces/{ns}/]{plural}[/{name}[/{sub}]].
    let (ns, plural, name, sub): (Option<&str>, &str, Option<&str>, Option<&str>) = {
        let is_ns_sub = |p: &str| group.is_empty() && matches!(p, "status" | "finalize");
        match tail {
            ["namespaces", ns, plural, rest @ ..] if !is_ns_sub(plural) => {
                if rest.len() > 2 {
                    return Err(ApiError::new(
                        404,
                        "NotFound",
                        "the server could not find the requested resource",
                    ));
                }
                (
                    Some(*ns),
                    *plural,
                    rest.first().copied(),
                    rest.get(1).copied(),
                )
            }
            [plural, rest @ ..] => {
                if rest.len() > 2 {
                    return Err(ApiError::new(
                        404,
                        "NotFound",
                        "the server could not find the requested resource",
                    ));
                }
                (None, *plural, rest.first().copied(), rest.get(1).copied())
            }
            [] => {
                return Err(ApiError::new(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ))
            }
        }
    };
    let t = {
        let st = cluster.lock();
        st.find_type(group, version, plural)
    }
    .ok_or_else(|| {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    })?;
    if ns.is_some() && !t.namespaced {
        return Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    if let Some(s) = sub {
        let ok = (s == "status" && t.status_subresource)
            || (s == "scale" && t.scale_subresource)
            || (s == "finalize" && t.kind == "Namespace");
        if !ok {
            return Err(ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ));
        }
    }
    resource(&cluster, &req, &t, version, ns, name, sub).await
}

/// `v1.31.4+k3s1`, `v1.36.0`, `v1.30`.
pub fn valid_version(v: &str) -> bool {
    let Some(core) = v.strip_prefix('v') else {
        return false;
    };
    let core = core.split(['+', '-']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    (2..=3).contains(&parts.len())
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

fn version_doc(v: &str) -> Value {
    let core = v.trim_start_matches('v');
    let mut it = core.split(['.', '+', '-']);
    let major = it.next().unwrap_or("1");
    let minor = it.next().unwrap_or("0");
    json!({
        "major": major, "minor": minor, "gitVersion": v, "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24.0",
        "compiler": "gc", "platform": "linux/amd64", "emulationMajor": major, "emulationMinor": minor,
        "minCompatibilityMajor": major, "minCompatibilityMinor": minor,
    })
}

fn decode_body(req: &Req) -> Result<Value, ApiError> {
    let ct = req
        .content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match ct.as_str() {
        "" | "application/json" | "*/*" => serde_json::from_slice(&req.body).map_err(|e| {
            ApiError::bad_request(format!("error decoding request body as JSON: {e}"))
        }),
        "application/yaml" | "application/x-yaml" | "text/yaml" => decode_yaml(&req.body),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

fn decode_yaml(b: &[u8]) -> Result<Value, ApiError> {
    if let Ok(v) = serde_json::from_slice::<Value>(b) {
        return Ok(v);
    }
    serde_yaml_ng::from_slice::<Value>(b)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
}

fn manager(req: &Req) -> Result<String, ApiError> {
    if let Some(m) = req.query.get("fieldManager") {
        if m.len() > 128 {
            return Err(ApiError::bad_request(
                "fieldManager: Too long: may not be more than 128 bytes",
            ));
        }
        if !m.is_empty() {
            return Ok(m.clone());
        }
    }
    let ua = req.user_agent.split('/').next().unwrap_or("").trim();
    Ok(if ua.is_empty() {
        "unknown".into()
    } else {
        ua.chars().take(128).collect()
    })
}

fn dry_run(req: &Req) -> Result<bool, ApiError> {
    match req.query.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(v) => Err(ApiError::bad_request(format!(
            "Invalid dryRun value: {v:?}: supported values: \"All\""
        ))),
    }
}

fn body_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

#[allow(clippy::too_many_arguments)]
async fn resource(
    cluster: &Arc<Cluster>,
    req: &Req,
    t: &Arc<ResourceType>,
    version: &str,
    ns: Option<&str>,
    name: Option<&str>,
    sub: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let ns_str = ns.unwrap_or("");
    if t.namespaced && name.is_some() && ns.is_none() {
        return Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    let sub_s = match sub {
        Some("status") => "status",
        _ => "",
    };
    let mk_ctx = || -> Result<WriteCtx, ApiError> {
        Ok(WriteCtx {
            manager: manager(req)?,
            dry_run: dry_run(req)?,
            version: version.to_string(),
            subresource: sub_s.to_string(),
            strict: match req.query.get("fieldValidation").map(String::as_str) {
                None | Some("") | Some("Ignore") | Some("Warn") => false,
                Some("Strict") => true,
                Some(other) => {
                    return Err(ApiError::bad_request(format!(
                        "invalid fieldValidation {other:?}: must be Ignore, Warn or Strict"
                    )))
                }
            },
        })
    };
    if sub == Some("scale") {
        return scale(
            cluster,
            req,
            t,
            version,
            ns_str,
            name.unwrap_or(""),
            mk_ctx()?,
        );
    }
    match (&req.method, name) {
        (&Method::GET, Some(name)) => {
            let obj = cluster
                .lock()
                .get(&t.key(), ns_str, name)
                .ok_or_else(|| ApiError::not_found(&t.group, &t.plural, name))?;
            let obj = with_version(t, &obj, version);
            if let Some(include) = req.table {
                let meta = json!({"resourceVersion": meta_str(&obj, "resourceVersion")});
                return Ok(ok_value(&crate::table::table(t, &[&obj], meta, include)));
            }
            Ok(json_response(200, body_vec(&obj)))
        }
        (&Method::GET, None) => {
            if truthy(req.query.get("watch")) {
                return watch(cluster, req, t, version, ns);
            }
            list(cluster, req, t, version, ns)
        }
        (&Method::POST, None) => {
            if t.namespaced && ns.is_none() {
                return Err(ApiError::method_not_allowed(
                    "POST requires a namespace for a namespaced resource",
                ));
            }
            let body = decode_body(req)?;
            let ctx = mk_ctx()?;
            let obj = cluster.lock().create(t, ns, body, &ctx)?;
            Ok(json_response(201, body_vec(&obj)))
        }
        (&Method::PUT, Some(name)) => {
            let body = decode_body(req)?;
            let ctx = mk_ctx()?;
            let obj = cluster.lock().update(t, ns_str, name, body, &ctx)?;
            Ok(json_response(200, body_vec(&obj)))
        }
        (&Method::PATCH, Some(name)) => {
            let ct = req
                .content_type
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            let ctx = mk_ctx()?;
            if ct == "application/apply-patch+yaml" {
                if req.query.get("fieldManager").is_none_or(|m| m.is_empty()) {
                    return Err(ApiError::bad_request(
                        "PATCH, application/apply-patch+yaml requires fieldManager to be set",
                    ));
                }
                let applied = decode_yaml(&req.body)?;
                let force = truthy(req.query.get("force"));
                let mut st = cluster.lock();
                let existed = st.get(&t.key(), ns_str, name).is_some();
                let obj = st.apply(t, ns_str, name, applied, force, &ctx)?;
                drop(st);
                return Ok(json_response(
                    if existed { 200 } else { 201 },
                    body_vec(&obj),
                ));
            }
            if truthy(req.query.get("force")) {
                return Err(ApiError::bad_request(
                    "force may not be set for non-apply patch",
                ));
            }
            let ptype = match ct.as_str() {
                "application/merge-patch+json" => PatchType::Merge,
                "application/json-patch+json" => PatchType::Json,
                "application/strategic-merge-patch+json" => PatchType::Strategic,
                other => return Err(ApiError::unsupported_media_type(other)),
            };
            let patch: Value = serde_json::from_slice(&req.body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            let obj = cluster.lock().patch(t, ns_str, name, ptype, &patch, &ctx)?;
            Ok(json_response(200, body_vec(&obj)))
        }
        (&Method::DELETE, Some(name)) => {
            if sub.is_some() {
                return Err(ApiError::method_not_allowed(
                    "DELETE is not supported on subresources",
                ));
            }
            let opts = delete_opts(req)?;
            let mut st = cluster.lock();
            let obj = st.delete(t, ns_str, name, &opts, version)?;
            Ok(json_response(200, body_vec(&obj)))
        }
        (&Method::DELETE, None) => {
            let opts = delete_opts(req)?;
            let labels = LabelSelector::parse(
                req.query
                    .get("labelSelector")
                    .map(String::as_str)
                    .unwrap_or(""),
            )?;
            let fields = FieldSelector::parse(
                req.query
                    .get("fieldSelector")
                    .map(String::as_str)
                    .unwrap_or(""),
            )?;
            let mut st = cluster.lock();
            let (items, _, _, _) = st.list(&t.key(), ns, &labels, &fields, None, None)?;
            let mut deleted = Vec::new();
            for o in items {
                let n = meta_str(&o, "name").unwrap_or("").to_string();
                let ons = meta_str(&o, "namespace").unwrap_or("").to_string();
                if let Ok(d) = st.delete(t, &ons, &n, &opts, version) {
                    deleted.push(d);
                }
            }
            let rv = st.rv;
            drop(st);
            Ok(ok_value(&json!({
                "kind": format!("{}List", t.kind), "apiVersion": t.api_version(version),
                "metadata": {"resourceVersion": rv.to_string()}, "items": deleted,
            })))
        }
        (m, _) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({m})"
        ))),
    }
}

fn delete_opts(req: &Req) -> Result<DeleteOpts, ApiError> {
    let mut o = DeleteOpts {
        dry_run: dry_run(req)?,
        ..Default::default()
    };
    if let Some(p) = req.query.get("propagationPolicy") {
        o.orphan = p == "Orphan";
    }
    if req.query.get("orphanDependents").map(String::as_str) == Some("true") {
        o.orphan = true;
    }
    if !req.body.is_empty() {
        let b: Value = serde_json::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?;
        if let Some(p) = b.get("propagationPolicy").and_then(Value::as_str) {
            o.orphan = p == "Orphan";
        }
        if b.get("orphanDependents").and_then(Value::as_bool) == Some(true) {
            o.orphan = true;
        }
        if let Some(d) = b.get("dryRun").and_then(Value::as_array) {
            if d.iter().any(|x| x == "All") {
                o.dry_run = true;
            }
        }
        if let Some(pc) = b.get("preconditions") {
            o.precondition_uid = pc.get("uid").and_then(Value::as_str).map(str::to_string);
            o.precondition_rv = pc
                .get("resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string);
        }
    }
    Ok(o)
}

fn list(
    cluster: &Arc<Cluster>,
    req: &Req,
    t: &Arc<ResourceType>,
    version: &str,
    ns: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let labels = LabelSelector::parse(
        req.query
            .get("labelSelector")
            .map(String::as_str)
            .unwrap_or(""),
    )?;
    let fields = FieldSelector::parse(
        req.query
            .get("fieldSelector")
            .map(String::as_str)
            .unwrap_or(""),
    )?;
    let limit = match req.query.get("limit").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        ),
    };
    let cont = req.query.get("continue").map(String::as_str);
    let (items, rv, next, remaining) =
        cluster
            .lock()
            .list(&t.key(), ns, &labels, &fields, limit, cont)?;
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(n) = next {
        meta["continue"] = json!(n);
        if remaining > 0 {
            meta["remainingItemCount"] = json!(remaining);
        }
    }
    if let Some(include) = req.table {
        let objs: Vec<Value> = items.iter().map(|o| with_version(t, o, version)).collect();
        let refs: Vec<&Value> = objs.iter().collect();
        return Ok(ok_value(&crate::table::table(t, &refs, meta, include)));
    }
    let mut out = Vec::with_capacity(64 + items.len() * 512);
    out.extend_from_slice(b"{\"kind\":");
    out.extend_from_slice(&body_vec(&json!(format!("{}List", t.kind))));
    out.extend_from_slice(b",\"apiVersion\":");
    out.extend_from_slice(&body_vec(&json!(t.api_version(version))));
    out.extend_from_slice(b",\"metadata\":");
    out.extend_from_slice(&body_vec(&meta));
    out.extend_from_slice(b",\"items\":[");
    let rewrite = version != t.storage_version();
    for (i, o) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if rewrite {
            let _ = serde_json::to_writer(&mut out, &with_version(t, o, version));
        } else {
            let _ = serde_json::to_writer(&mut out, &**o);
        }
    }
    out.extend_from_slice(b"]}");
    Ok(json_response(200, out))
}

#[derive(serde::Serialize)]
struct WatchEvent<'a> {
    #[serde(rename = "type")]
    etype: &'a str,
    object: &'a Value,
}

fn encode_event(etype: &str, object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&WatchEvent { etype, object }).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn watch(
    cluster: &Arc<Cluster>,
    req: &Req,
    t: &Arc<ResourceType>,
    version: &str,
    ns: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let labels = LabelSelector::parse(
        req.query
            .get("labelSelector")
            .map(String::as_str)
            .unwrap_or(""),
    )?;
    let fields = FieldSelector::parse(
        req.query
            .get("fieldSelector")
            .map(String::as_str)
            .unwrap_or(""),
    )?;
    let bookmarks = truthy(req.query.get("allowWatchBookmarks"));
    let initial_events = truthy(req.query.get("sendInitialEvents"));
    let timeout = match req.query.get("timeoutSeconds").map(String::as_str) {
        None | Some("") => None,
        // Capped at a day so the deadline arithmetic cannot overflow.
        Some(s) => Some(Duration::from_secs(
            s.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {s:?}")))?
                .min(86_400),
        )),
    };
    let from = match req.query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version {s:?}")))?,
        ),
    };
    let from = if initial_events { None } else { from };
    let key = t.key();
    let ns_owned = ns.map(str::to_string);
    let (rx_events, initial, current_rv) = {
        let st = cluster.lock();
        let rx = st.subscribe();
        (rx, st.watch_start(&key, ns, from), st.rv)
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let t2 = t.clone();
    let version = version.to_string();
    let cluster2 = cluster.clone();
    let as_table = req.table;
    tokio::spawn(async move {
        let t = t2;
        let selected = |o: &Value| {
            (labels.is_empty() || labels.matches(o)) && (fields.is_empty() || fields.matches(o))
        };
        // The event type this watcher sees: an update that moves an object into or out of the selector
        // is an ADDED or DELETED, as kube-apiserver sends them.
        let classify = |e: &Event| -> Option<&'static str> {
            if e.key != key || ns_owned.as_deref().is_some_and(|n| n != e.ns) {
                return None;
            }
            let now = selected(&e.object);
            if e.etype == "MODIFIED" {
                let before = e.prev.as_deref().is_some_and(&selected);
                return match (before, now) {
                    (true, true) => Some("MODIFIED"),
                    (false, true) => Some("ADDED"),
                    (true, false) => Some("DELETED"),
                    (false, false) => None,
                };
            }
            now.then_some(e.etype)
        };
        let send_ev = |e: &Event, etype: &str| {
            let obj = if version != t.storage_version() {
                with_version(&t, &e.object, &version)
            } else {
                (*e.object).clone()
            };
            if let Some(include) = as_table {
                let meta = json!({"resourceVersion": e.rv.to_string()});
                return encode_event(etype, &crate::table::table(&t, &[&obj], meta, include));
            }
            encode_event(etype, &obj)
        };
        let initial = match initial {
            Ok(i) => i,
            Err(e) => {
                let _ = tx.send(encode_event("ERROR", &e.to_status())).await;
                return;
            }
        };
        let mut last = from.unwrap_or(0);
        for e in initial.iter() {
            let Some(ty) = classify(e) else { continue };
            if tx.send(send_ev(e, ty)).await.is_err() {
                return;
            }
            last = last.max(e.rv);
        }
        if from.is_none() {
            last = last.max(current_rv);
        }
        let bookmark = |rv: u64, initial_end: bool| {
            let mut md = json!({"resourceVersion": rv.to_string()});
            if initial_end {
                md["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            encode_event(
                "BOOKMARK",
                &json!({"kind": t.kind, "apiVersion": t.api_version(&version), "metadata": md}),
            )
        };
        if initial_events && bookmarks && tx.send(bookmark(last, true)).await.is_err() {
            return;
        }
        let mut rx_events = rx_events;
        let deadline = timeout.map(|d| tokio::time::Instant::now() + d);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            let sleep_until = deadline
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400));
            tokio::select! {
                // Receiving from a broadcast channel is cancel-safe.
                r = rx_events.recv() => match r {
                    Ok(e) => {
                        if e.rv <= last {
                            continue;
                        }
                        let Some(ty) = classify(&e) else { continue };
                        last = e.rv;
                        if tx.send(send_ev(&e, ty)).await.is_err() { return; }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Catch up from the retained history, or tell the client to relist.
                        let replay = cluster2.lock().watch_start(&key, ns_owned.as_deref(), Some(last));
                        match replay {
                            Ok(evs) => {
                                for e in evs.iter() {
                                    last = last.max(e.rv);
                                    let Some(ty) = classify(e) else { continue };
                                    if tx.send(send_ev(e, ty)).await.is_err() { return; }
                                }
                            }
                            Err(err) => {
                                let _ = tx.send(encode_event("ERROR", &err.to_status())).await;
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                // Interval ticks are cancel-safe.
                _ = tick.tick() => {
                    if tx.is_closed() || cluster2.closed.load(std::sync::atomic::Ordering::Relaxed) { return; }
                    if bookmarks {
                        let rv = cluster2.rv.load(std::sync::atomic::Ordering::Relaxed).max(last);
                        if tx.send(bookmark(rv, false)).await.is_err() { return; }
                    }
                }
                // A sleep is cancel-safe; it only ends the stream.
                _ = tokio::time::sleep_until(sleep_until) => return,
            }
        }
    });
    let mut r = Response::new(ChannelBody { rx }.boxed_unsync());
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        "cache-control",
        hyper::header::HeaderValue::from_static("no-cache, private"),
    );
    Ok(r)
}

fn scale_doc(t: &ResourceType, obj: &Value) -> Value {
    let md = obj.get("metadata").cloned().unwrap_or(json!({}));
    let selector = obj
        .get("spec")
        .and_then(|s| s.get("selector"))
        .and_then(|s| s.get("matchLabels"))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let _ = t;
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": md.get("name"), "namespace": md.get("namespace"), "uid": md.get("uid"),
            "resourceVersion": md.get("resourceVersion"), "creationTimestamp": md.get("creationTimestamp"),
        },
        "spec": {"replicas": obj.get("spec").and_then(|s| s.get("replicas")).cloned().unwrap_or(json!(0))},
        "status": {
            "replicas": obj.get("status").and_then(|s| s.get("replicas")).cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

fn scale(
    cluster: &Arc<Cluster>,
    req: &Req,
    t: &Arc<ResourceType>,
    version: &str,
    ns: &str,
    name: &str,
    ctx: WriteCtx,
) -> Result<Response<Body>, ApiError> {
    let mut st = cluster.lock();
    let obj = st
        .get(&t.key(), ns, name)
        .ok_or_else(|| ApiError::not_found(&t.group, &t.plural, name))?;
    let mut doc = scale_doc(t, &obj);
    let new_doc = match req.method {
        Method::GET => return Ok(ok_value(&doc)),
        Method::PUT => decode_body(req)?,
        Method::PATCH => {
            let ct = req
                .content_type
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            let patch: Value = if ct == "application/apply-patch+yaml" {
                decode_yaml(&req.body)?
            } else {
                serde_json::from_slice(&req.body)
                    .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?
            };
            match ct.as_str() {
                "application/json-patch+json" => crate::patch::json_patch(&mut doc, &patch)?,
                "application/merge-patch+json"
                | "application/strategic-merge-patch+json"
                | "application/apply-patch+yaml" => crate::patch::merge_patch(&mut doc, &patch),
                other => return Err(ApiError::unsupported_media_type(other)),
            }
            doc
        }
        _ => {
            return Err(ApiError::method_not_allowed(
                "only GET, PUT and PATCH are allowed on scale",
            ))
        }
    };
    let replicas = new_doc
        .get("spec")
        .and_then(|s| s.get("replicas"))
        .and_then(Value::as_i64)
        .ok_or_else(|| {
            ApiError::invalid(
                "Scale",
                "autoscaling",
                name,
                vec![("spec.replicas".into(), "Required value".into())],
            )
        })?;
    if replicas < 0 {
        return Err(ApiError::invalid(
            "Scale",
            "autoscaling",
            name,
            vec![(
                "spec.replicas".into(),
                format!("Invalid value: {replicas}: must be greater than or equal to 0"),
            )],
        ));
    }
    let mut body = with_version(t, &obj, version);
    match body.get_mut("spec").and_then(Value::as_object_mut) {
        Some(spec) => {
            spec.insert("replicas".into(), json!(replicas));
        }
        None => {
            return Err(ApiError::invalid(
                &t.kind,
                &t.group,
                name,
                vec![("spec".into(), "Required value".into())],
            ))
        }
    }
    if let Some(rv) = new_doc
        .get("metadata")
        .and_then(|m| m.get("resourceVersion"))
        .and_then(Value::as_str)
    {
        if req.method == Method::PUT
            && !rv.is_empty()
            && Some(rv) != meta_str(&obj, "resourceVersion")
        {
            return Err(ApiError::conflict(&t.group, &t.plural, name));
        }
    }
    let updated = st.update(t, ns, name, body, &ctx)?;
    drop(st);
    Ok(ok_value(&scale_doc(t, &updated)))
}

fn admin(shared: &Arc<Shared>, req: &Req, rest: &str) -> Result<Response<Body>, ApiError> {
    let segs: Vec<&str> = rest.split('/').collect();
    match (&req.method, segs.as_slice()) {
        (&Method::GET, ["clusters"]) => {
            let mut names: Vec<String> = shared
                .clusters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .cloned()
                .collect();
            names.sort();
            let mut out = Vec::new();
            for n in names {
                let Some(c) = shared.existing(&n) else {
                    continue;
                };
                let st = c.lock();
                let nodes: Vec<Value> = st
                    .iter(&(String::new(), "nodes".into()), None)
                    .map(|n| {
                        let ready = crate::controller::node_ready(n);
                        json!({"name": meta_str(n, "name"), "ready": ready})
                    })
                    .collect();
                out.push(json!({"name": n, "resourceVersion": st.rv.to_string(), "nodes": nodes}));
            }
            Ok(ok_value(&json!(out)))
        }
        (&Method::DELETE, ["clusters", c]) => {
            if shared.remove_cluster(c) {
                Ok(ok_value(
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "message": format!("cluster {c} wiped"), "code": 200}),
                ))
            } else {
                Err(ApiError::new(
                    404,
                    "NotFound",
                    format!("cluster {c:?} not found"),
                ))
            }
        }
        (&Method::POST, ["clusters", c, "version"]) => {
            let body: Value = serde_json::from_slice(&req.body)
                .map_err(|e| ApiError::bad_request(format!("error decoding body: {e}")))?;
            let v = body
                .get("gitVersion")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::bad_request("body must be {\"gitVersion\": \"v1.31.4+k3s1\"}")
                })?;
            if !valid_version(v) {
                return Err(ApiError::bad_request(format!(
                    "invalid version {v:?}: expected vMAJOR.MINOR[.PATCH][+meta]"
                )));
            }
            if crate::util::validate_dns1123_subdomain(c).is_some() {
                return Err(ApiError::bad_request(format!("invalid cluster name {c:?}")));
            }
            let cluster = shared.cluster(c);
            cluster.set_version(v);
            Ok(ok_value(&version_doc(&cluster.version())))
        }
        (&Method::POST, ["clusters", c, "nodes", n, action @ ("not-ready" | "ready")]) => {
            let cluster = shared.existing(c).ok_or_else(|| {
                ApiError::new(404, "NotFound", format!("cluster {c:?} not found"))
            })?;
            let mut st = cluster.lock();
            if st.get(&(String::new(), "nodes".into()), "", n).is_none() {
                return Err(ApiError::not_found("", "nodes", n));
            }
            if *action == "not-ready" {
                st.forced_not_ready.insert(n.to_string());
            } else {
                st.forced_not_ready.remove(*n);
            }
            crate::controller::refresh_node(&mut st, n);
            let node = st.get(&(String::new(), "nodes".into()), "", n);
            Ok(ok_value(node.as_deref().unwrap_or(&Value::Null)))
        }
        _ => Err(ApiError::new(
            404,
            "NotFound",
            "unknown sandbox admin endpoint",
        )),
    }
}
