//! Benchmark of the Kubernetes provider against kubectl on the real control plane (testenv): apply and wait for
//! 1,000 objects (ConfigMaps and Deployments over 20 namespaces), then diff them.
//!
//! Run through `scripts/bench-kube`, which builds this in release and starts the sandbox:
//! `kube_bench --url http://127.0.0.1:PORT [--runs 3] [--namespaces 20] [--per-namespace 25]`.
//! Every round uses fresh clusters (`/clusters/bench-N-phoenix`, `/clusters/bench-N-kubectl`), so
//! neither tool sees the other's objects.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use phoenix::engine::{self, CancelToken, EngineOptions, Graph, Layer};
use phoenix::providers::kube::{
    component_nodes, diff_component_with, ApplyOptions, ComponentSpec, FixedClient, Resolver,
    SealStore,
};
use phoenix::render::Manifest;
use phoenix::report::events::EventSink;
use serde_json::json;

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
        runs: 3,
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
    Ok(args)
}

fn client(url: &str) -> Result<kube::Client, String> {
    // Both kube's rustls and the AWS SDK's enable a crypto provider; choose one for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut cfg = kube::Config::new(url.parse().map_err(|e| format!("url {url}: {e}"))?);
    cfg.connect_timeout = Some(Duration::from_secs(5));
    cfg.read_timeout = Some(Duration::from_secs(30));
    cfg.write_timeout = Some(Duration::from_secs(30));
    kube::Client::try_from(cfg).map_err(|e| format!("client: {e}"))
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
                    })
                    .collect(),
                depends_on: Vec::new(),
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
            poll_interval: Duration::from_millis(200),
            seals: seals.clone(),
            ..ApplyOptions::default()
        },
    ) {
        graph.add(spec, action).map_err(|e| e.to_string())?;
    }
    let summary = engine::run(
        graph,
        EngineOptions::default(),
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

async fn phoenix_diff(
    url: &str,
    specs: &[ComponentSpec],
    seals: &SealStore,
) -> Result<Duration, String> {
    let client = client(url)?;
    let t0 = Instant::now();
    let resolver = Resolver::new();
    let diffs = futures::future::join_all(
        specs
            .iter()
            .map(|s| diff_component_with(&client, s, &resolver, 32, seals)),
    )
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
    eprintln!(
        "diff ({}): {objects} objects, {dry_runs} through a dry run, {:.3}s",
        if seals.dir().is_some() {
            "with the rebuild's seals"
        } else {
            "no seals"
        },
        elapsed.as_secs_f64()
    );
    Ok(elapsed)
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

fn stats(samples: &[Duration]) -> (f64, f64, f64) {
    let mut s: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
    s.sort_by(f64::total_cmp);
    (s[0], s[s.len() / 2], s[s.len() - 1])
}

fn row(name: &str, ours: &[Duration], theirs: &[Duration]) {
    let (a0, a1, a2) = stats(ours);
    let (b0, b1, b2) = stats(theirs);
    println!(
        "{name:<28} phoenix {a1:>7.3}s ({a0:.3}-{a2:.3})   kubectl {b1:>7.3}s ({b0:.3}-{b2:.3})   kubectl/phoenix {:.1}x",
        b1 / a1
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
    let total: usize = specs.iter().map(|s| s.manifests.len()).sum();
    let deployments = args.namespaces * args.per_namespace;
    let dir = std::env::temp_dir().join(format!("kube-bench-{}", std::process::id()));
    write_dir(&dir, &specs)?;
    let dir_arg = dir.to_string_lossy().to_string();
    println!(
        "objects: {total} ({} namespaces, {deployments} ConfigMaps, {deployments} Deployments); runs: {}",
        args.namespaces, args.runs
    );
    let (mut pa, mut ka, mut pd, mut pc, mut kd) = (vec![], vec![], vec![], vec![], vec![]);
    for run in 0..args.runs {
        let ours = format!("{}/clusters/bench-{run}-phoenix", args.url);
        let theirs = format!("{}/clusters/bench-{run}-kubectl", args.url);
        // Where a rebuild keeps its seals ($PHOENIX_HOME/cache/seals/ENV); the diff reads them
        // from the files, as `phoenix diff` after a rebuild does.
        let seals = SealStore::in_dir(dir.join(format!("seals-{run}")));
        pa.push(phoenix_apply(&ours, &specs, &seals).await?);
        let (apply, _) = kubectl(&args, &theirs, &["apply", "--server-side", "-f", &dir_arg])?;
        let (wait, _) = kubectl(
            &args,
            &theirs,
            &[
                "wait",
                "--for=condition=Available",
                "deploy",
                "--all",
                "-A",
                "--timeout=300s",
            ],
        )?;
        ka.push(apply + wait);
        // Without seals first (every object through a dry run, like kubectl), then with the
        // rebuild's seals.
        pc.push(phoenix_diff(&ours, &specs, &SealStore::none()).await?);
        pd.push(phoenix_diff(&ours, &specs, &seals).await?);
        let (diff, same) = kubectl(
            &args,
            &ours,
            &[
                "diff",
                "--server-side",
                "--field-manager=phoenix",
                "-f",
                &dir_arg,
            ],
        )?;
        if !same {
            return Err("kubectl diff reported differences on the phoenix-applied cluster".into());
        }
        kd.push(diff);
        eprintln!(
            "run {}: apply+wait phoenix {:.3}s kubectl {:.3}s (apply {:.3}s + wait {:.3}s); diff phoenix {:.3}s (no seals {:.3}s) kubectl {:.3}s",
            run + 1,
            pa[run].as_secs_f64(),
            ka[run].as_secs_f64(),
            apply.as_secs_f64(),
            wait.as_secs_f64(),
            pd[run].as_secs_f64(),
            pc[run].as_secs_f64(),
            kd[run].as_secs_f64()
        );
    }
    println!("median (min-max) over {} runs:", args.runs);
    row(&format!("apply+wait {total} objects"), &pa, &ka);
    row(&format!("diff {total} objects"), &pd, &kd);
    row(&format!("diff {total}, no seals"), &pc, &kd);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
