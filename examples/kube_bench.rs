//! Benchmark of the Kubernetes provider on the real control plane (testenv: kube-apiserver 1.37 with its
//! controller manager, scheduler and a simulated kubelet): apply and wait for 1,020 objects (20 Namespaces, 500
//! ConfigMaps and 500 Deployments), then diff them — phoenix against kubectl and against a bare client.
//!
//! Run through `scripts/bench-kube`, which builds this in release and starts the control plane:
//! `kube_bench --url http://127.0.0.1:PORT [--runs 1] [--namespaces 20] [--per-namespace 25]`.
//!
//! Three tools, each in a fresh cluster of its own (`/clusters/bench-R-TOOL`, started before its clock starts and
//! wiped once its round is done, so no tool shares a cluster or the machine with another one's controllers):
//! - phoenix: `component_nodes` through the engine with `phoenix rebuild`'s settings (16 components in flight,
//!   32 requests in flight per component, health polled every 250 ms); then `diff_component_with` as
//!   `phoenix diff` runs it (its components and requests in flight), without seals and with the seals the apply
//!   wrote.
//! - kubectl: `kubectl apply --server-side -f DIR` + `kubectl wait --for=condition=Available deploy --all -A`;
//!   `kubectl diff --server-side -f DIR`.
//! - bare: the limit — kube-rs directly, the same server-side applies (same bodies, field validation and
//!   concurrency as phoenix: 16 namespaces at a time, each its Namespace then its objects 32 at a time), then
//!   one watch of all Deployments until every one is Available; no discovery, ownership check, inventory or
//!   health logic. Its diff is the same server-side apply dry runs at `phoenix diff`'s concurrency, nothing else.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::watcher;
// `phoenix diff`'s components at a time and requests in flight per component.
use phoenix::engine::{self, CancelToken, EngineOptions, Graph, Layer};
use phoenix::providers::kube::{
    component_nodes, diff_component_with, ApplyOptions, ComponentSpec, FixedClient, Resolver,
    SealStore,
};
use phoenix::render::Manifest;
use phoenix::report::events::EventSink;
use phoenix::workflow::check::{
    COMPONENTS_IN_FLIGHT as DIFF_COMPONENTS, REQUESTS_PER_COMPONENT as DIFF_REQUESTS,
};
use serde_json::{json, Value};

/// `phoenix rebuild`'s settings (src/commands/rebuild.rs, src/cli/mod.rs): components in flight, requests in
/// flight per component, health poll.
const REBUILD_COMPONENTS: usize = 16;
const REBUILD_REQUESTS: usize = 32;
const REBUILD_POLL: Duration = Duration::from_millis(250);

struct Args {
    url: String,
    runs: usize,
    namespaces: usize,
    per_namespace: usize,
    kubectl: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: String::new(),
        runs: 1,
        namespaces: 20,
        per_namespace: 25,
        kubectl: PathBuf::from(
            std::env::var("KUBECTL").unwrap_or_else(|_| ".venv/bin/kubectl".into()),
        ),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => args.url = value()?,
            "--runs" => args.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--namespaces" => {
                args.namespaces = value()?.parse().map_err(|e| format!("--namespaces: {e}"))?
            }
            "--per-namespace" => {
                args.per_namespace = value()?
                    .parse()
                    .map_err(|e| format!("--per-namespace: {e}"))?
            }
            "--kubectl" => args.kubectl = PathBuf::from(value()?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.url.is_empty() {
        return Err("--url http://127.0.0.1:PORT is required".into());
    }
    if args.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    Ok(args)
}

fn client_with(url: &str, read_timeout: Duration) -> Result<kube::Client, String> {
    // Both kube's rustls and the AWS SDK's enable a crypto provider; choose one for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut cfg = kube::Config::new(url.parse().map_err(|e| format!("url {url}: {e}"))?);
    cfg.connect_timeout = Some(Duration::from_secs(5));
    cfg.read_timeout = Some(read_timeout);
    cfg.write_timeout = Some(Duration::from_secs(30));
    kube::Client::try_from(cfg).map_err(|e| format!("client: {e}"))
}

fn client(url: &str) -> Result<kube::Client, String> {
    client_with(url, Duration::from_secs(60))
}

/// The router's control API (`/testenv/clusters/NAME`): start a cluster and wait until it serves, or wipe it.
async fn control(router: &str, method: &str, cluster: &str) -> Result<(), String> {
    let c = client_with(router, Duration::from_secs(300))?;
    let req = http::Request::builder()
        .method(method)
        .uri(format!("/testenv/clusters/{cluster}"))
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    c.request_text(req)
        .await
        .map(|_| ())
        .map_err(|e| format!("{method} /testenv/clusters/{cluster}: {e}"))
}

/// One component per namespace: the Namespace, `per` ConfigMaps and `per` Deployments.
fn components(namespaces: usize, per: usize) -> Vec<ComponentSpec> {
    (0..namespaces)
        .map(|n| {
            let ns = format!("bench-{n:02}");
            let mut objects =
                vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})];
            for i in 0..per {
                objects.push(json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": format!("config-{i:03}"), "namespace": ns},
                    "data": {"index": i.to_string(), "payload": "x".repeat(64)}}));
                objects.push(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": format!("app-{i:03}"), "namespace": ns},
                    "spec": {"replicas": 1,
                        "selector": {"matchLabels": {"app": format!("app-{i:03}")}},
                        "template": {"metadata": {"labels": {"app": format!("app-{i:03}")}},
                            "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}}}}));
            }
            ComponentSpec {
                env: "bench".into(),
                commit: "0000000000000000000000000000000000000000".into(),
                layer: Layer::Apps,
                name: ns.clone(),
                namespace: Some(ns.clone()),
                manifests: objects
                    .into_iter()
                    .enumerate()
                    .map(|(i, object)| Manifest {
                        source: format!("bench/{ns}.yaml"),
                        line: i + 1,
                        object,
                        stage: Default::default(),
                    })
                    .collect(),
                depends_on: Vec::new(),
                completion: None,
                wait: Duration::from_secs(300),
                force_conflicts: false,
                leave_fields: Vec::new(),
                checks: Vec::new(),
            }
        })
        .collect()
}

/// The same objects as files for kubectl, stamped with the same marks, namespaces first.
fn write_dir(dir: &Path, specs: &[ComponentSpec]) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let stamp = |spec: &ComponentSpec, m: &Manifest| {
        let mut o = m.object.clone();
        spec.marks().stamp(&mut o);
        serde_json::to_string(&o).unwrap_or_default()
    };
    let namespaces: Vec<String> = specs
        .iter()
        .flat_map(|s| {
            s.manifests
                .iter()
                .filter(|m| m.object["kind"] == "Namespace")
                .map(|m| stamp(s, m))
        })
        .collect();
    write(&dir.join("00-namespaces.yaml"), &namespaces)?;
    for s in specs {
        let rest: Vec<String> = s
            .manifests
            .iter()
            .filter(|m| m.object["kind"] != "Namespace")
            .map(|m| stamp(s, m))
            .collect();
        write(&dir.join(format!("10-{}.yaml", s.name)), &rest)?;
    }
    Ok(())
}

fn write(path: &Path, docs: &[String]) -> Result<(), String> {
    std::fs::write(path, docs.join("\n---\n")).map_err(|e| format!("{}: {e}", path.display()))
}

/// The objects of each component as phoenix sends them (stamped with its marks), for the bare client.
fn stamped(specs: &[ComponentSpec]) -> Vec<(String, Vec<Value>)> {
    specs
        .iter()
        .map(|s| {
            let objects = s
                .manifests
                .iter()
                .map(|m| {
                    let mut o = m.object.clone();
                    s.marks().stamp(&mut o);
                    o
                })
                .collect();
            (s.name.clone(), objects)
        })
        .collect()
}

async fn phoenix_apply(
    url: &str,
    specs: &[ComponentSpec],
    seals: &SealStore,
) -> Result<Duration, String> {
    let client = client(url)?;
    let t0 = Instant::now();
    let mut graph = Graph::new();
    for (spec, action) in component_nodes(
        Arc::new(FixedClient::new(client)),
        specs.to_vec(),
        &ApplyOptions {
            concurrency: REBUILD_REQUESTS,
            poll_interval: REBUILD_POLL,
            seals: seals.clone(),
            ..ApplyOptions::default()
        },
    ) {
        graph.add(spec, action).map_err(|e| e.to_string())?;
    }
    let summary = engine::run(
        graph,
        EngineOptions {
            concurrency: REBUILD_COMPONENTS,
            ..EngineOptions::default()
        },
        EventSink::new(),
        CancelToken::new(),
    )
    .await;
    let elapsed = t0.elapsed();
    if !summary.converged {
        let failed: Vec<String> = summary
            .nodes
            .iter()
            .filter(|n| !n.state.is_success())
            .map(|n| format!("{}: {:?}", n.id, n.state))
            .collect();
        return Err(format!("phoenix did not converge: {}", failed.join("; ")));
    }
    Ok(elapsed)
}

/// A diff as `phoenix diff` runs it; returns its time and how many objects went through a dry run.
async fn phoenix_diff(
    url: &str,
    specs: &[ComponentSpec],
    seals: &SealStore,
) -> Result<(Duration, usize), String> {
    let client = client(url)?;
    let t0 = Instant::now();
    let resolver = Resolver::new();
    let diffs: Vec<_> = futures::stream::iter(
        specs
            .iter()
            .map(|s| diff_component_with(&client, s, &resolver, DIFF_REQUESTS, seals)),
    )
    .buffered(DIFF_COMPONENTS)
    .collect()
    .await;
    let elapsed = t0.elapsed();
    let mut objects = 0;
    let mut dry_runs = 0;
    for d in diffs {
        let d = d.map_err(|e| format!("diff: {e}"))?;
        dry_runs += d.dry_runs;
        if d.has_drift() {
            return Err(format!("unexpected drift in {}", d.component));
        }
        objects += d.objects.len();
    }
    if objects != specs.iter().map(|s| s.manifests.len()).sum::<usize>() {
        return Err(format!("diff covered {objects} objects"));
    }
    Ok((elapsed, dry_runs))
}

/// Where the bare client sends an object: the three kinds of the bench, no discovery.
fn bare_api(client: &kube::Client, object: &Value) -> Result<Api<DynamicObject>, String> {
    let ns = object["metadata"]["namespace"].as_str();
    let ar = match object["kind"].as_str() {
        Some("Namespace") => ApiResource::erase::<Namespace>(&()),
        Some("ConfigMap") => ApiResource::erase::<ConfigMap>(&()),
        Some("Deployment") => ApiResource::erase::<Deployment>(&()),
        other => return Err(format!("the bare client does not know kind {other:?}")),
    };
    Ok(match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    })
}

/// One server-side apply (or dry run) as phoenix sends it: its field manager, strict field validation.
async fn bare_send(client: &kube::Client, object: &Value, dry_run: bool) -> Result<(), String> {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let mut params = PatchParams::apply("phoenix").validation_strict();
    if dry_run {
        params = params.dry_run().force();
    }
    bare_api(client, object)?
        .patch(name, &params, &Patch::Apply(object))
        .await
        .map(|_| ())
        .map_err(|e| format!("applying {name}: {e}"))
}

/// Applies every object (per namespace: the Namespace, then the rest `REBUILD_REQUESTS` at a time;
/// `REBUILD_COMPONENTS` namespaces at a time), then watches Deployments until all are Available.
async fn bare_apply(url: &str, sets: &[(String, Vec<Value>)]) -> Result<Duration, String> {
    let client = client(url)?;
    let deployments: usize = sets
        .iter()
        .flat_map(|(_, objects)| objects.iter())
        .filter(|o| o["kind"] == "Deployment")
        .count();
    let t0 = Instant::now();
    futures::stream::iter(sets.iter().map(|(_, objects)| {
        let client = &client;
        async move {
            let (first, rest) = objects.split_first().ok_or("an empty namespace")?;
            bare_send(client, first, false).await?;
            futures::stream::iter(rest.iter().map(|o| bare_send(client, o, false)))
                .buffer_unordered(REBUILD_REQUESTS)
                .try_collect::<Vec<()>>()
                .await?;
            Ok::<_, String>(())
        }
    }))
    .buffer_unordered(REBUILD_COMPONENTS)
    .try_collect::<Vec<()>>()
    .await?;
    let applied = t0.elapsed();
    let mut available: HashSet<(String, String)> = HashSet::new();
    let stream = watcher(Api::<Deployment>::all(client), watcher::Config::default());
    futures::pin_mut!(stream);
    while available.len() < deployments {
        let event = stream
            .try_next()
            .await
            .map_err(|e| format!("watching Deployments: {e}"))?
            .ok_or("the Deployment watch ended")?;
        match event {
            watcher::Event::Apply(d) | watcher::Event::InitApply(d) => {
                let key = (
                    d.metadata.namespace.clone().unwrap_or_default(),
                    d.metadata.name.clone().unwrap_or_default(),
                );
                if is_available(&d) {
                    available.insert(key);
                } else {
                    available.remove(&key);
                }
            }
            watcher::Event::Delete(d) => {
                available.remove(&(
                    d.metadata.namespace.clone().unwrap_or_default(),
                    d.metadata.name.clone().unwrap_or_default(),
                ));
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    }
    let elapsed = t0.elapsed();
    eprintln!(
        "  bare: applied in {:.3}s, all {deployments} Deployments Available at {:.3}s",
        applied.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    Ok(elapsed)
}

/// Available=True for the Deployment's current generation.
fn is_available(d: &Deployment) -> bool {
    let Some(status) = &d.status else {
        return false;
    };
    status.observed_generation >= d.metadata.generation
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Available" && c.status == "True")
}

/// The diff's limit: the same server-side apply dry runs, at `phoenix diff`'s concurrency.
async fn bare_diff(url: &str, sets: &[(String, Vec<Value>)]) -> Result<Duration, String> {
    let client = client(url)?;
    let t0 = Instant::now();
    futures::stream::iter(sets.iter().map(|(_, objects)| {
        let client = &client;
        futures::stream::iter(objects.iter().map(move |o| bare_send(client, o, true)))
            .buffer_unordered(DIFF_REQUESTS)
            .try_collect::<Vec<()>>()
    }))
    .buffered(DIFF_COMPONENTS)
    .try_collect::<Vec<Vec<()>>>()
    .await?;
    Ok(t0.elapsed())
}

fn kubectl(args: &Args, url: &str, cmd: &[&str]) -> Result<(Duration, bool), String> {
    let t0 = Instant::now();
    let out = Command::new(&args.kubectl)
        .arg(format!("--server={url}"))
        .args(cmd)
        .env("KUBECONFIG", "/dev/null")
        .output()
        .map_err(|e| format!("running {}: {e}", args.kubectl.display()))?;
    let elapsed = t0.elapsed();
    let ok = out.status.success();
    // kubectl diff exits 1 when it finds differences, >1 on errors.
    if !ok && out.status.code() != Some(1) {
        return Err(format!(
            "kubectl {}: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok((elapsed, ok))
}

fn median(samples: &[Duration]) -> (f64, f64, f64) {
    let mut s: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
    s.sort_by(f64::total_cmp);
    (s[0], s[s.len() / 2], s[s.len() - 1])
}

fn fmt(samples: &[Duration]) -> String {
    let (lo, mid, hi) = median(samples);
    if samples.len() == 1 {
        format!("{mid:.3}s")
    } else {
        format!("{mid:.3}s ({lo:.3}-{hi:.3})")
    }
}

/// One line per benchmark, in a fixed shape scripts/bench reads: `NAME | phoenix X | kubectl Y | bare Z |
/// kubectl/phoenix Rx | phoenix/bare Sx`.
fn row(name: &str, ours: &[Duration], theirs: &[Duration], bare: Option<&[Duration]>) {
    let p = median(ours).1;
    let k = median(theirs).1;
    let (b, over_bare) = match bare {
        Some(b) => (fmt(b), format!("{:.2}x", p / median(b).1)),
        None => ("-".to_string(), "-".to_string()),
    };
    println!(
        "{name:<28} | phoenix {} | kubectl {} | bare {b} | kubectl/phoenix {:.1}x | phoenix/bare {over_bare}",
        fmt(ours),
        fmt(theirs),
        k / p
    );
}

#[tokio::main]
async fn main() {
    if let Err(e) = real_main().await {
        eprintln!("kube_bench: {e}");
        std::process::exit(1);
    }
}

async fn real_main() -> Result<(), String> {
    let args = parse_args()?;
    let specs = components(args.namespaces, args.per_namespace);
    let sets = stamped(&specs);
    let total: usize = specs.iter().map(|s| s.manifests.len()).sum();
    let deployments = args.namespaces * args.per_namespace;
    let dir = std::env::temp_dir().join(format!("kube-bench-{}", std::process::id()));
    write_dir(&dir, &specs)?;
    let dir_arg = dir.to_string_lossy().to_string();
    println!(
        "objects: {total} ({} namespaces, {deployments} ConfigMaps, {deployments} Deployments); runs: {}",
        args.namespaces, args.runs
    );
    let (mut pa, mut ka, mut ba) = (vec![], vec![], vec![]);
    let (mut pd, mut pc, mut kd, mut bd) = (vec![], vec![], vec![], vec![]);
    let router = args.url.as_str();
    for run in 0..args.runs {
        // phoenix: apply+wait, then a diff without seals (every object through a dry run, like kubectl) and one
        // with the seals the apply wrote, read from their files as `phoenix diff` after a rebuild does.
        let name = format!("bench-{run}-phoenix");
        control(router, "POST", &name).await?;
        let url = format!("{router}/clusters/{name}");
        let seals = SealStore::in_dir(dir.join(format!("seals-{run}")));
        pa.push(phoenix_apply(&url, &specs, &seals).await?);
        let (unsealed, unsealed_dry) = phoenix_diff(&url, &specs, &SealStore::none()).await?;
        let (sealed, sealed_dry) = phoenix_diff(&url, &specs, &seals).await?;
        pc.push(unsealed);
        pd.push(sealed);
        control(router, "DELETE", &name).await?;
        eprintln!(
            "run {}: phoenix apply+wait {:.3}s; diff no seals {:.3}s ({unsealed_dry} dry runs), with seals {:.3}s ({sealed_dry} dry runs)",
            run + 1,
            pa[run].as_secs_f64(),
            unsealed.as_secs_f64(),
            sealed.as_secs_f64()
        );

        // kubectl, in a cluster of its own: what it applied is what it diffs (same field manager).
        let name = format!("bench-{run}-kubectl");
        control(router, "POST", &name).await?;
        let url = format!("{router}/clusters/{name}");
        let (apply, _) = kubectl(&args, &url, &["apply", "--server-side", "-f", &dir_arg])?;
        let (wait, _) = kubectl(
            &args,
            &url,
            &[
                "wait",
                "--for=condition=Available",
                "deploy",
                "--all",
                "-A",
                "--timeout=600s",
            ],
        )?;
        ka.push(apply + wait);
        let (diff, same) = kubectl(&args, &url, &["diff", "--server-side", "-f", &dir_arg])?;
        if !same {
            return Err("kubectl diff reported differences right after kubectl's own apply".into());
        }
        kd.push(diff);
        control(router, "DELETE", &name).await?;
        eprintln!(
            "run {}: kubectl apply+wait {:.3}s (apply {:.3}s + wait {:.3}s); diff {:.3}s",
            run + 1,
            ka[run].as_secs_f64(),
            apply.as_secs_f64(),
            wait.as_secs_f64(),
            diff.as_secs_f64()
        );

        // The bare client: the limit.
        let name = format!("bench-{run}-bare");
        control(router, "POST", &name).await?;
        let url = format!("{router}/clusters/{name}");
        ba.push(bare_apply(&url, &sets).await?);
        bd.push(bare_diff(&url, &sets).await?);
        control(router, "DELETE", &name).await?;
        eprintln!(
            "run {}: bare apply+wait {:.3}s; dry runs of every object {:.3}s",
            run + 1,
            ba[run].as_secs_f64(),
            bd[run].as_secs_f64()
        );
    }
    println!("median (min-max) over {} runs:", args.runs);
    row(&format!("apply+wait {total} objects"), &pa, &ka, Some(&ba));
    row(&format!("diff {total}, with seals"), &pd, &kd, None);
    row(&format!("diff {total}, no seals"), &pc, &kd, Some(&bd));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
