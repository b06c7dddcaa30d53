//! `phoenix watch` end to end: the real binary watching the demo on moto + the real control plane, with a
//! webhook receiver on 127.0.0.1. Drift made with kubectl gives one alert per episode and a
//! converged notice once it is fixed; `/metrics` serves the drift gauges; with `--heal` the
//! agent re-converges by itself and the heal is in `phoenix history`.

use testkit::{bed, control_plane, moto};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bed::{text, Bed};

/// Records the JSON body of every POST; answers 200.
pub(super) struct Receiver {
    pub(super) url: String,
    pub(super) posts: Arc<Mutex<Vec<String>>>,
}

pub(super) fn receiver() -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
    let url = format!("http://{}/hook/T0K3N", listener.local_addr().expect("addr"));
    let posts = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&posts);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            if let Some(body) = read_post(&stream) {
                seen.lock().expect("lock").push(body);
            }
            let mut s = stream;
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    Receiver { url, posts }
}

fn read_post(stream: &TcpStream) -> Option<String> {
    let mut reader = BufReader::new(stream);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(String::from_utf8_lossy(&body).into_owned())
}

pub(super) fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Polls `f` every 200 ms for up to `limit`; panics naming `what` on timeout.
pub(super) fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Watch(Child);

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_watch(bed: &Bed, dir: &std::path::Path, hook: &str, extra: &[&str]) -> (Watch, String) {
    let port = moto::free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = bed
        .command(dir)
        .env("PHOENIX_WEBHOOK_URL", hook)
        .args([
            "watch",
            "demo",
            "--interval",
            "1s",
            "--alert-after",
            "2s",
            "--listen",
            &listen,
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start phoenix watch");
    (Watch(child), listen)
}

fn alerts(posts: &Mutex<Vec<String>>, needle: &str) -> usize {
    posts
        .lock()
        .expect("lock")
        .iter()
        .filter(|p| p.contains(needle))
        .count()
}

#[test]
fn drift_alerts_once_per_episode_then_a_converged_notice() {
    let bed = Bed::new();
    let repo = bed.demo_repo();
    let out = bed.phoenix(&repo.dir, &["rebuild", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let hook = receiver();
    let (_watch, listen) = start_watch(&bed, &repo.dir, &hook.url, &[]);

    // The agent serves the gauges of a clean check first.
    let metrics = wait_for(
        "an in-sync check on /metrics",
        Duration::from_secs(60),
        || {
            http_get(&listen, "/metrics")
                .filter(|m| m.contains("phoenix_drift{env=\"demo\",layer=\"apps\"} 0"))
        },
    );
    assert!(metrics.contains("phoenix_drift_checks_total"), "{metrics}");

    bed.kubectl(
        "demo",
        &["-n", "web", "scale", "deploy/web", "--replicas=4"],
    );
    wait_for("the drift alert", Duration::from_secs(60), || {
        (alerts(&hook.posts, "has drifted") > 0).then_some(())
    });
    // Drift persists over several more checks: still one alert.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(alerts(&hook.posts, "has drifted"), 1, "{:?}", hook.posts);
    let alert = hook.posts.lock().expect("lock")[0].clone();
    assert!(alert.contains("demo") && alert.contains("apps"), "{alert}");
    let metrics = http_get(&listen, "/metrics").expect("metrics");
    assert!(
        metrics.contains("phoenix_drift{env=\"demo\",layer=\"apps\"} 1"),
        "{metrics}"
    );

    let out = bed.phoenix(&repo.dir, &["rebuild", "demo", "--layers", "apps"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    wait_for("the converged notice", Duration::from_secs(60), || {
        (alerts(&hook.posts, "has converged") > 0).then_some(())
    });
    assert_eq!(alerts(&hook.posts, "has drifted"), 1);
    // The webhook token is nowhere in what the agent serves.
    assert!(!http_get(&listen, "/metrics")
        .unwrap_or_default()
        .contains("T0K3N"));
}

#[test]
fn heal_re_converges_and_is_recorded_in_history() {
    let bed = Bed::new();
    let repo = bed.demo_repo();
    let out = bed.phoenix(&repo.dir, &["rebuild", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let hook = receiver();
    let (_watch, listen) = start_watch(&bed, &repo.dir, &hook.url, &["--heal"]);
    wait_for("the first check", Duration::from_secs(60), || {
        http_get(&listen, "/metrics").filter(|m| m.contains("phoenix_drift{env=\"demo\""))
    });

    bed.kubectl("demo", &["-n", "web", "delete", "configmap", "web-config"]);
    wait_for("the ConfigMap healed back", Duration::from_secs(60), || {
        let out = std::process::Command::new(control_plane::kubectl_binary())
            .arg(format!(
                "--kubeconfig={}",
                bed.git
                    .phoenix_home()
                    .join("clusters/demo/kubeconfig")
                    .display()
            ))
            .args(["-n", "web", "get", "configmap", "web-config", "-o", "name"])
            .output()
            .ok()?;
        out.status.success().then_some(())
    });
    let history = wait_for("a heal run in history", Duration::from_secs(30), || {
        let out = bed.phoenix(&repo.dir, &["history", "demo"]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        stdout.contains("heal").then_some(stdout)
    });
    assert!(history.contains("rebuild"), "{history}");
}

#[test]
fn watch_json_prints_one_versioned_line_per_check() {
    use std::io::BufRead;
    let bed = Bed::new();
    let repo = bed.demo_repo();
    let out = bed.phoenix(&repo.dir, &["rebuild", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let listen = format!("127.0.0.1:{}", moto::free_port());
    let mut child = bed
        .command(&repo.dir)
        .args([
            "watch",
            "demo",
            "--interval",
            "1s",
            "--listen",
            &listen,
            "-o",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start phoenix watch");
    let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let watch = Watch(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let check = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no check line; stdout so far:\n{}", seen.join("\n")));
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(v["schemaVersion"], 1, "{v}");
        seen.push(line);
        if v["type"] == "check" {
            break v;
        }
    };
    drop(watch);
    assert_eq!(check["verdict"], "in-sync", "{check:#}");
    assert_eq!(check["report"]["env"], "demo", "{check:#}");
    assert_eq!(check["report"]["exitCode"], 0, "{check:#}");
}
