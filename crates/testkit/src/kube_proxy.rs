//! A loopback HTTP proxy in front of a Kubernetes API server (the real control plane's router) that injects faults
//! on command: 500 and 503 Status answers, 429 throttling with Retry-After, dropped
//! connections, a silent endpoint, and a switch to another backend (a restarted server).
//! Each client connection carries one request: the proxy asks the backend to close after its
//! answer and closes the client side too, so kube's client simply reconnects.
//! Runs on its own thread.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KubeFault {
    /// 500 InternalError.
    ServerError,
    /// 503 ServiceUnavailable.
    Unavailable,
    /// 429 TooManyRequests with `Retry-After: 1`.
    Throttle,
    /// Read the request, close without answering.
    Drop,
    /// Read the request, never answer.
    Silent,
}

#[derive(Default)]
struct State {
    backend: u16,
    /// Requests still to fault (`None`: every request until `pass`).
    rule: Option<(KubeFault, Option<u32>)>,
    injected: usize,
    /// The request line of every request (`PATCH /api/v1/...?dryRun=All&... HTTP/1.1`).
    lines: Vec<String>,
    /// Run once, before forwarding the first request whose request line has all the needles.
    hook: Option<Hook>,
}

type Hook = (Vec<String>, Box<dyn FnOnce() + Send>);

pub struct KubeProxy {
    pub port: u16,
    state: Arc<Mutex<State>>,
    _thread: std::thread::JoinHandle<()>,
}

impl KubeProxy {
    pub fn start(backend: u16) -> KubeProxy {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let port = std_listener.local_addr().expect("addr").port();
        let state = Arc::new(Mutex::new(State {
            backend,
            ..State::default()
        }));
        let shared = Arc::clone(&state);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("listener");
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let state = Arc::clone(&shared);
                    tokio::spawn(async move {
                        let _ = handle(client, state).await;
                    });
                }
            });
        });
        KubeProxy {
            port,
            state,
            _thread: thread,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next `count` requests get `fault`.
    pub fn inject(&self, fault: KubeFault, count: u32) {
        self.lock().rule = Some((fault, Some(count)));
    }

    /// Every request gets `fault` until [`KubeProxy::pass`].
    pub fn always(&self, fault: KubeFault) {
        self.lock().rule = Some((fault, None));
    }

    pub fn pass(&self) {
        self.lock().rule = None;
    }

    pub fn set_backend(&self, port: u16) {
        self.lock().backend = port;
    }

    pub fn injected(&self) -> usize {
        self.lock().injected
    }

    pub fn requests(&self) -> usize {
        self.lock().lines.len()
    }

    /// Every request line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lock().lines.clone()
    }

    /// Runs `action` once, just before forwarding the first request whose request line contains
    /// every one of `needles` (to make a write land between two requests of a client). `action`
    /// blocks the proxy: it must not go through it.
    pub fn before(&self, needles: &[&str], action: impl FnOnce() + Send + 'static) {
        self.lock().hook = Some((
            needles.iter().map(|n| n.to_string()).collect(),
            Box::new(action),
        ));
    }

    /// How many requests so far had `needle` in their request line.
    pub fn count(&self, needle: &str) -> usize {
        self.lock()
            .lines
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

async fn read_request(client: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let end = loop {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    while buf.len() < end + length {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[end..].to_vec();
    Ok(Some((head, body)))
}

/// The request head with `Connection: close` (so the backend ends the answer with EOF).
fn closing(head: &str) -> String {
    let mut out = String::new();
    for line in head.trim_end_matches("\r\n\r\n").split("\r\n") {
        if line
            .split_once(':')
            .is_some_and(|(k, _)| k.eq_ignore_ascii_case("connection"))
        {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}

fn status(code: u16, reason: &str, extra: &str) -> Vec<u8> {
    // As API Priority and Fairness answers: the wait asked for is in the Status too.
    let details = if code == 429 {
        r#","details":{"retryAfterSeconds":1}"#
    } else {
        ""
    };
    let body = format!(
        r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"injected by the test proxy","reason":"{reason}","code":{code}{details}}}"#
    );
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn handle(mut client: TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let Some((head, body)) = read_request(&mut client).await? else {
        return Ok(());
    };
    let hook = {
        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
        let line = head.lines().next().unwrap_or_default();
        let hit = s
            .hook
            .as_ref()
            .is_some_and(|(needles, _)| needles.iter().all(|n| line.contains(n.as_str())));
        if hit {
            s.hook.take().map(|(_, action)| action)
        } else {
            None
        }
    };
    if let Some(action) = hook {
        action();
    }
    let (fault, backend) = {
        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
        s.lines
            .push(head.lines().next().unwrap_or_default().to_string());
        let fault = match &mut s.rule {
            Some((f, Some(n))) if *n > 0 => {
                *n -= 1;
                Some(*f)
            }
            Some((f, None)) => Some(*f),
            _ => None,
        };
        if fault.is_some() {
            s.injected += 1;
        }
        (fault, s.backend)
    };
    match fault {
        Some(KubeFault::ServerError) => client.write_all(&status(500, "InternalError", "")).await?,
        Some(KubeFault::Unavailable) => {
            client
                .write_all(&status(503, "ServiceUnavailable", ""))
                .await?
        }
        Some(KubeFault::Throttle) => {
            client
                .write_all(&status(429, "TooManyRequests", "Retry-After: 1\r\n"))
                .await?
        }
        Some(KubeFault::Drop) => return Ok(()),
        Some(KubeFault::Silent) => {
            // Hold the connection open without answering, until the proxy's thread ends.
            std::future::pending::<()>().await;
        }
        None => {
            let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", backend)).await else {
                return Ok(());
            };
            upstream.write_all(closing(&head).as_bytes()).await?;
            upstream.write_all(&body).await?;
            let mut response = Vec::new();
            upstream.read_to_end(&mut response).await?;
            client.write_all(&response).await?;
        }
    }
    client.shutdown().await
}
