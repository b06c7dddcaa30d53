//! A loopback HTTP proxy in front of a test server that injects faults on command: EC2
//! throttling (503 RequestLimitExceeded), 500 InternalError, dropped connections, and a silent
//! endpoint that accepts and never answers. It can also enforce RunInstances `ClientToken`
//! semantics as EC2 documents them, which moto ignores. A rule can be limited to one region:
//! moto serves every region on one endpoint and reads the region from the SigV4 credential
//! scope, so a fault on the requests signed for `us-east-1` takes that region out alone.
//!
//! Self-contained: tokio and std only; it runs on its own thread and runtime, so sync and async
//! tests can both drive it. One request per client connection (the backends close after each
//! answer, as moto's does).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What happens to matching requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 503 with the EC2 `RequestLimitExceeded` error document.
    Throttle,
    /// 500 with the EC2 `InternalError` error document.
    ServerError,
    /// The request is read and the connection closed without an answer.
    Drop,
    /// The request is read and never answered (the connection is held open).
    Silent,
    /// The request is forwarded, the answer thrown away and the connection closed: the call
    /// took effect but the client never learns it (the lost-response case).
    LoseResponse,
    /// An EC2 error document with this HTTP status, code and message (e.g. 500
    /// InsufficientInstanceCapacity, 400 VpcLimitExceeded).
    Answer {
        status: u16,
        code: String,
        message: String,
    },
}

#[derive(Clone, Debug)]
struct Rule {
    fault: Fault,
    /// Requests still to affect; `None` = until cleared.
    remaining: Option<u32>,
    /// Only requests whose EC2 `Action` equals this.
    action: Option<String>,
    /// Only requests signed for this region (the credential scope of their Authorization).
    region: Option<String>,
    /// Only requests signed for this service (`ec2`, `route53`: the scope's next part).
    service: Option<String>,
}

#[derive(Default, Debug)]
struct State {
    backend: u16,
    rules: Vec<Rule>,
    /// `Action` of every request seen, in order, with whether a fault was injected.
    log: Vec<(String, Option<Fault>)>,
    /// (signed region, `Action`, fault) of every request seen, in order.
    region_log: Vec<(String, String, Option<Fault>)>,
    /// Simulated boot time: an instance is reported `pending` / `initializing` by
    /// DescribeInstanceStatus until this long after its RunInstances answer passed the proxy.
    boot_delay: Option<Duration>,
    launched: HashMap<String, Instant>,
    /// With [`FaultProxy::enforce_client_tokens`]: RunInstances client token → (the request's
    /// other parameters, the answer EC2 gave).
    client_tokens: Option<HashMap<String, (String, Vec<u8>)>>,
    /// IdempotentParameterMismatch answers given.
    mismatches: usize,
}

/// The proxy; stops when dropped.
pub struct FaultProxy {
    pub port: u16,
    state: Arc<Mutex<State>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1:0 forwarding to 127.0.0.1:`backend`.
    pub fn start(backend: u16) -> FaultProxy {
        let state = Arc::new(Mutex::new(State {
            backend,
            ..State::default()
        }));
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("binding the fault proxy");
        std_listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let port = std_listener.local_addr().expect("proxy address").port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let shared = Arc::clone(&state);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("proxy runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("tokio listener");
                tokio::select! {
                    // Cancel-safe: dropping the accept loop only stops accepting.
                    _ = accept_loop(listener, shared) => {}
                    _ = rx => {}
                }
            });
            // Held (silent) connections are dropped with the runtime.
            rt.shutdown_timeout(Duration::from_millis(100));
        });
        FaultProxy {
            port,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Points the proxy at another backend port.
    pub fn set_backend(&self, port: u16) {
        self.lock().backend = port;
    }

    /// The next `count` requests (of `action`, or any) get `fault`.
    pub fn inject(&self, fault: Fault, count: u32, action: Option<&str>) {
        self.lock().rules.push(Rule {
            fault,
            remaining: Some(count),
            action: action.map(str::to_string),
            region: None,
            service: None,
        });
    }

    /// Every request (of `action`, or any) gets `fault` until [`FaultProxy::pass`].
    pub fn always(&self, fault: Fault, action: Option<&str>) {
        self.lock().rules.push(Rule {
            fault,
            remaining: None,
            action: action.map(str::to_string),
            region: None,
            service: None,
        });
    }

    /// Every request signed for `region` gets `fault` until [`FaultProxy::pass`]; other
    /// regions pass. With [`Fault::Drop`] the region is unreachable as in an outage.
    pub fn always_in_region(&self, fault: Fault, region: &str) {
        self.lock().rules.push(Rule {
            fault,
            remaining: None,
            action: None,
            region: Some(region.to_string()),
            service: None,
        });
    }

    /// Like [`FaultProxy::always_in_region`], for one service only: `ec2` out in a region
    /// while Route 53 (signed for us-east-1, where its control plane is) still answers.
    pub fn always_in_region_for(&self, fault: Fault, region: &str, service: &str) {
        self.lock().rules.push(Rule {
            fault,
            remaining: None,
            action: None,
            region: Some(region.to_string()),
            service: Some(service.to_string()),
        });
    }

    /// (region, `Action`, fault injected) of every request seen so far; the region is read from
    /// the credential scope (empty if the request is unsigned).
    pub fn region_log(&self) -> Vec<(String, String, Option<Fault>)> {
        self.lock().region_log.clone()
    }

    /// Simulates instances that take `delay` to boot (moto's are running at once): until then,
    /// DescribeInstanceStatus for one instance reports it `pending` with checks `initializing`.
    pub fn set_boot_delay(&self, delay: Option<Duration>) {
        self.lock().boot_delay = delay;
    }

    /// From now on RunInstances behaves as EC2 documents `ClientToken`: a token seen before
    /// with the same parameters gets the earlier answer (no new instance), with other
    /// parameters a 400 `IdempotentParameterMismatch`.
    pub fn enforce_client_tokens(&self) {
        self.lock().client_tokens.get_or_insert_with(HashMap::new);
    }

    /// How many RunInstances were refused with IdempotentParameterMismatch.
    pub fn client_token_mismatches(&self) -> usize {
        self.lock().mismatches
    }

    /// Clears every fault: requests pass through.
    pub fn pass(&self) {
        self.lock().rules.clear();
    }

    /// The `Action` of every request seen so far, with the fault injected if any.
    pub fn log(&self) -> Vec<(String, Option<Fault>)> {
        self.lock().log.clone()
    }

    /// How many faults were injected.
    pub fn injected(&self) -> usize {
        self.lock().log.iter().filter(|(_, f)| f.is_some()).count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let _ = handle(client, state).await;
        });
    }
}

/// Reads one HTTP request (headers + Content-Length body).
async fn read_request(client: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > 1 << 20 {
            return Ok(None);
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < header_end + length {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(Some(buf))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The region of a SigV4-signed request: `Credential=AKID/DATE/REGION/SERVICE/aws4_request`
/// in its Authorization header.
/// (region, service) of the credential scope `KEY/DATE/REGION/SERVICE/aws4_request`; empty if
/// the request is unsigned.
fn scope_of(request: &[u8]) -> (String, String) {
    let end = find(request, b"\r\n\r\n").unwrap_or(request.len());
    let head = String::from_utf8_lossy(&request[..end]);
    head.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("authorization")
                .then(|| value.to_string())
        })
        .and_then(|auth| {
            let scope = auth.split("Credential=").nth(1)?;
            let scope = scope.split([',', ' ']).next()?;
            let mut parts = scope.split('/').skip(2);
            Some((
                parts.next()?.to_string(),
                parts.next().unwrap_or_default().to_string(),
            ))
        })
        .unwrap_or_default()
}

fn action_of(request: &[u8]) -> String {
    let text = String::from_utf8_lossy(request);
    text.split(['&', '\n', '?'])
        .find_map(|p| p.trim().strip_prefix("Action="))
        .unwrap_or("")
        .to_string()
}

/// The `ClientToken` of a form-encoded request and its other parameters (sorted), if it has one.
fn client_token(request: &[u8]) -> Option<(String, String)> {
    let start = find(request, b"\r\n\r\n")? + 4;
    let body = String::from_utf8_lossy(&request[start..]);
    let mut token = None;
    let mut rest: Vec<&str> = Vec::new();
    for pair in body.split('&') {
        match pair.strip_prefix("ClientToken=") {
            Some(t) => token = Some(t.to_string()),
            None => rest.push(pair),
        }
    }
    rest.sort_unstable();
    token.map(|t| (t, rest.join("&")))
}

fn error_response(status: u16, reason: &str, code: &str, message: &str) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>"
    );
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn handle(mut client: TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let Some(request) = read_request(&mut client).await? else {
        return Ok(());
    };
    let action = action_of(&request);
    let (region, service) = scope_of(&request);
    let (fault, backend) = {
        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut fault = None;
        for rule in s.rules.iter_mut() {
            let matches = rule.action.as_deref().is_none_or(|a| a == action)
                && rule.region.as_deref().is_none_or(|r| r == region)
                && rule.service.as_deref().is_none_or(|v| v == service);
            if matches && rule.remaining != Some(0) {
                if let Some(n) = rule.remaining.as_mut() {
                    *n -= 1;
                }
                fault = Some(rule.fault.clone());
                break;
            }
        }
        s.rules.retain(|r| r.remaining != Some(0));
        s.log.push((action.clone(), fault.clone()));
        s.region_log.push((region, action.clone(), fault.clone()));
        (fault, s.backend)
    };
    match fault {
        Some(Fault::Throttle) => {
            let r = error_response(
                503,
                "Service Unavailable",
                "RequestLimitExceeded",
                "Request limit exceeded.",
            );
            client.write_all(&r).await?;
            client.shutdown().await
        }
        Some(Fault::ServerError) => {
            let r = error_response(
                500,
                "Internal Server Error",
                "InternalError",
                "An internal error has occurred.",
            );
            client.write_all(&r).await?;
            client.shutdown().await
        }
        Some(Fault::Answer {
            status,
            code,
            message,
        }) => {
            let reason = if status >= 500 {
                "Internal Server Error"
            } else {
                "Bad Request"
            };
            let r = error_response(status, reason, &code, &message);
            client.write_all(&r).await?;
            client.shutdown().await
        }
        Some(Fault::Drop) => Ok(()),
        Some(Fault::Silent) => {
            // Hold the connection open without answering until the proxy stops.
            let _held = client;
            std::future::pending::<()>().await;
            Ok(())
        }
        Some(Fault::LoseResponse) => {
            let mut upstream = TcpStream::connect(("127.0.0.1", backend)).await?;
            upstream.write_all(&request).await?;
            let mut sink = Vec::new();
            let _ = upstream.read_to_end(&mut sink).await;
            Ok(())
        }
        None => {
            let token = match action.as_str() {
                "RunInstances" => client_token(&request),
                _ => None,
            };
            if let Some((token, params)) = &token {
                // The answer is decided under the lock and written after it is released.
                let answer = {
                    let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
                    let known = s.client_tokens.as_ref().and_then(|t| t.get(token)).cloned();
                    match known {
                        Some((earlier, _)) if &earlier != params => {
                            s.mismatches += 1;
                            Some(error_response(
                                400,
                                "Bad Request",
                                "IdempotentParameterMismatch",
                                "The client token you have provided is associated with a resource that is already deleted or was created with different parameters.",
                            ))
                        }
                        Some((_, answer)) => Some(answer),
                        None => None,
                    }
                };
                if let Some(answer) = answer {
                    client.write_all(&answer).await?;
                    return client.shutdown().await;
                }
            }
            let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", backend)).await else {
                // The backend is down: the connection closes unanswered, as behind a dead host.
                return Ok(());
            };
            upstream.write_all(&request).await?;
            let mut response = Vec::new();
            upstream.read_to_end(&mut response).await?;
            if let Some((token, params)) = token {
                let ok =
                    response.starts_with(b"HTTP/1.1 200") || response.starts_with(b"HTTP/1.0 200");
                let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
                if let (true, Some(tokens)) = (ok, s.client_tokens.as_mut()) {
                    tokens.insert(token, (params, response.clone()));
                }
            }
            let response = simulate_boot(&state, &action, response);
            client.write_all(&response).await?;
            client.shutdown().await
        }
    }
}

fn instance_ids(body: &str) -> Vec<String> {
    body.split("<instanceId>")
        .skip(1)
        .filter_map(|rest| rest.split("</instanceId>").next())
        .map(str::to_string)
        .collect()
}

/// Records launches and, for a single young instance, rewrites its status to still booting.
fn simulate_boot(state: &Arc<Mutex<State>>, action: &str, response: Vec<u8>) -> Vec<u8> {
    let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(delay) = s.boot_delay else {
        return response;
    };
    let Some(split) = find(&response, b"\r\n\r\n") else {
        return response;
    };
    let body = String::from_utf8_lossy(&response[split + 4..]).to_string();
    match action {
        "RunInstances" => {
            let now = Instant::now();
            for id in instance_ids(&body) {
                s.launched.insert(id, now);
            }
            response
        }
        "DescribeInstanceStatus" => {
            let ids = instance_ids(&body);
            let young =
                ids.len() == 1 && s.launched.get(&ids[0]).is_some_and(|t| t.elapsed() < delay);
            if !young {
                return response;
            }
            let body = body
                .replace("<name>running</name>", "<name>pending</name>")
                .replace("<code>16</code>", "<code>0</code>")
                .replace("<status>ok</status>", "<status>initializing</status>");
            let head = String::from_utf8_lossy(&response[..split]);
            let mut out: Vec<String> = head
                .lines()
                .filter(|l| !l.to_ascii_lowercase().starts_with("content-length:"))
                .map(str::to_string)
                .collect();
            out.push(format!("Content-Length: {}", body.len()));
            format!("{}\r\n\r\n{body}", out.join("\r\n")).into_bytes()
        }
        _ => response,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_region_is_read_from_the_credential_scope() {
        let req = b"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: AWS4-HMAC-SHA256 Credential=AKID/20261205/us-west-2/ec2/aws4_request, SignedHeaders=host, Signature=0\r\n\r\nAction=DescribeVpcs";
        assert_eq!(super::scope_of(req), ("us-west-2".into(), "ec2".into()));
        assert_eq!(
            super::scope_of(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            (String::new(), String::new())
        );
    }
}
