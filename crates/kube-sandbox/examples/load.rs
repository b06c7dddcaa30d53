//! Load benchmark: N objects, C concurrent clients, a mixed workload over loopback; prints latency percentiles.
//! Objects carry a `group` label with 200 values, so a selector list in one namespace returns ~N/200 objects.
//!
//! `cargo run --release -p kube-sandbox --example load -- --objects 10000 --clients 50 --requests 20000`
//! (`--url URL` targets a running sandbox instead of starting one in-process.)

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

struct Args {
    objects: usize,
    clients: usize,
    requests: usize,
    namespaces: usize,
    url: Option<String>,
    /// Run only one operation of the mix (get, list-selector, list-page, merge-patch, apply, create).
    only: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        objects: 10_000,
        clients: 50,
        requests: 20_000,
        namespaces: 10,
        url: None,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let val = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = || {
            val.parse::<usize>()
                .map_err(|_| format!("{flag}: not a number: {val}"))
        };
        match flag.as_str() {
            "--objects" => a.objects = num()?,
            "--clients" => a.clients = num()?.max(1),
            "--requests" => a.requests = num()?,
            "--namespaces" => a.namespaces = num()?.max(1),
            "--url" => a.url = Some(val),
            "--only" => a.only = Some(val),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

/// Deterministic xorshift, so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

async fn call(c: &Client, method: &str, url: &str, ct: &str, body: String) -> Result<u16, String> {
    let mut req = hyper::Request::builder().method(method).uri(url);
    if !ct.is_empty() {
        req = req.header("content-type", ct);
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = c.request(req).await.map_err(|e| e.to_string())?;
    let code = resp.status().as_u16();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(code)
}

fn cm(name: &str, ns: &str, i: usize, rev: u64) -> String {
    serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "labels": {"group": format!("g{}", i % 200), "app": "load"}},
        "data": {"index": i.to_string(), "rev": rev.to_string(), "payload": "x".repeat(200)}
    })
    .to_string()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn report(
    title: &str,
    mut by_op: BTreeMap<&'static str, Vec<Duration>>,
    errors: usize,
    wall: Duration,
) {
    let mut all: Vec<Duration> = by_op.values().flatten().copied().collect();
    all.sort();
    println!(
        "\n{title}: {} requests in {:.2?} ({:.0} req/s), {errors} errors",
        all.len(),
        wall,
        all.len() as f64 / wall.as_secs_f64()
    );
    println!(
        "{:<14} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "operation", "count", "p50", "p90", "p99", "max"
    );
    for (op, v) in by_op.iter_mut() {
        v.sort();
        println!(
            "{:<14} {:>8} {:>10.2?} {:>10.2?} {:>10.2?} {:>10.2?}",
            op,
            v.len(),
            percentile(v, 0.5),
            percentile(v, 0.9),
            percentile(v, 0.99),
            v.last().copied().unwrap_or_default()
        );
    }
    println!(
        "{:<14} {:>8} {:>10.2?} {:>10.2?} {:>10.2?} {:>10.2?}",
        "all",
        all.len(),
        percentile(&all, 0.5),
        percentile(&all, 0.9),
        percentile(&all, 0.99),
        all.last().copied().unwrap_or_default()
    );
}

type Samples = (BTreeMap<&'static str, Vec<Duration>>, usize);

fn merge(into: &mut Samples, from: Samples) {
    for (k, v) in from.0 {
        into.0.entry(k).or_default().extend(v);
    }
    into.1 += from.1;
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let (_handle, base) = match &args.url {
        Some(u) => (None, u.trim_end_matches('/').to_string()),
        None => {
            let h = match kube_sandbox::Sandbox::start(kube_sandbox::Config::default()).await {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("error: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            let u = h.url();
            (Some(h), u)
        }
    };
    println!(
        "target {base}: {} objects in {} namespaces, {} clients, {} mixed requests",
        args.objects, args.namespaces, args.clients, args.requests
    );
    let client: Client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(args.clients)
            .build_http();
    for n in 0..args.namespaces {
        let body = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("load-{n}")}}).to_string();
        if let Err(e) = call(
            &client,
            "POST",
            &format!("{base}/api/v1/namespaces"),
            "application/json",
            body,
        )
        .await
        {
            eprintln!("error: creating namespaces: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }

    // Phase 1: populate with concurrent creates.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.clients {
        let client = client.clone();
        let base = base.clone();
        let (objects, clients, nss) = (args.objects, args.clients, args.namespaces);
        tasks.push(tokio::spawn(async move {
            let mut s: Samples = Default::default();
            let mut i = w;
            while i < objects {
                let ns = format!("load-{}", i % nss);
                let t = Instant::now();
                let r = call(
                    &client,
                    "POST",
                    &format!("{base}/api/v1/namespaces/{ns}/configmaps"),
                    "application/json",
                    cm(&format!("cm-{i}"), &ns, i, 0),
                )
                .await;
                s.0.entry("create").or_default().push(t.elapsed());
                if r != Ok(201) {
                    s.1 += 1;
                }
                i += clients;
            }
            s
        }));
    }
    let mut populate: Samples = Default::default();
    for t in tasks {
        if let Ok(s) = t.await {
            merge(&mut populate, s);
        }
    }
    report("populate", populate.0, populate.1, started.elapsed());

    // Phase 2: the mixed workload.
    let started = Instant::now();
    let mut tasks = Vec::new();
    let per_client = args.requests / args.clients;
    for w in 0..args.clients {
        let client = client.clone();
        let base = base.clone();
        let (objects, nss) = (args.objects, args.namespaces);
        let only: Option<usize> = match args.only.as_deref() {
            None => None,
            Some("get") => Some(0),
            Some("list-selector") => Some(50),
            Some("list-page") => Some(60),
            Some("merge-patch") => Some(65),
            Some("apply") => Some(80),
            Some("create") => Some(90),
            Some(other) => {
                eprintln!("error: unknown --only {other}");
                return std::process::ExitCode::from(2);
            }
        };
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (w as u64 + 1));
            let mut s: Samples = Default::default();
            let mut extra = 0usize;
            for r in 0..per_client {
                let i = rng.below(objects);
                let ns = format!("load-{}", i % nss);
                let obj = format!("{base}/api/v1/namespaces/{ns}/configmaps/cm-{i}");
                let roll = only.unwrap_or_else(|| rng.below(100));
                let t = Instant::now();
                let (op, res, want): (&'static str, Result<u16, String>, &[u16]) = match roll {
                    0..=49 => ("get", call(&client, "GET", &obj, "", String::new()).await, &[200]),
                    50..=59 => (
                        "list-selector",
                        call(&client, "GET", &format!("{base}/api/v1/namespaces/{ns}/configmaps?labelSelector=group%3Dg{}", i % 200), "", String::new()).await,
                        &[200],
                    ),
                    60..=64 => (
                        "list-page",
                        call(&client, "GET", &format!("{base}/api/v1/configmaps?limit=100"), "", String::new()).await,
                        &[200],
                    ),
                    65..=79 => (
                        "merge-patch",
                        call(&client, "PATCH", &obj, "application/merge-patch+json", format!("{{\"data\":{{\"rev\":\"{r}\"}}}}")).await,
                        &[200],
                    ),
                    80..=89 => (
                        "apply",
                        call(&client, "PATCH", &format!("{obj}?fieldManager=load&force=true"), "application/apply-patch+yaml", cm(&format!("cm-{i}"), &ns, i, r as u64)).await,
                        &[200, 201],
                    ),
                    90..=94 => {
                        extra += 1;
                        let name = format!("extra-{w}-{extra}");
                        ("create", call(&client, "POST", &format!("{base}/api/v1/namespaces/{ns}/configmaps"), "application/json", cm(&name, &ns, i, 0)).await, &[201])
                    }
                    _ => {
                        let name = format!("extra-{w}-{extra}");
                        let code = if extra > 0 {
                            // The namespace of the extra object is unknown here; try where it was made.
                            call(&client, "DELETE", &format!("{base}/api/v1/namespaces/{ns}/configmaps/{name}"), "", String::new()).await
                        } else {
                            Ok(404)
                        };
                        ("delete", code, &[200, 404])
                    }
                };
                s.0.entry(op).or_default().push(t.elapsed());
                if !res.as_ref().is_ok_and(|c| want.contains(c)) {
                    s.1 += 1;
                }
            }
            s
        }));
    }
    let mut mixed: Samples = Default::default();
    for t in tasks {
        if let Ok(s) = t.await {
            merge(&mut mixed, s);
        }
    }
    report("mixed workload", mixed.0, mixed.1, started.elapsed());
    if populate.1 + mixed.1 > 0 {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
