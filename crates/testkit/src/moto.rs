//! A moto server (the EC2 test bed) started by a test and killed when dropped.
//!
//! The server binary is `$MOTO_SERVER`, else `<repo>/.venv/bin/moto_server`, else `moto_server`
//! on PATH; without one the test fails with a message saying how to install it.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running moto server on 127.0.0.1.
pub struct Moto {
    child: Option<Child>,
    pub port: u16,
    log: PathBuf,
}

/// Picks a free loopback port by binding port 0.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0 for a free port");
    listener.local_addr().expect("local address").port()
}

/// The moto_server binary, or a clear failure.
pub fn moto_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let venv = crate::repo_root().join(".venv/bin/moto_server");
    if venv.is_file() {
        return venv;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("moto_server");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "moto_server not found: set MOTO_SERVER, or install it with \
         `python3 -m venv .venv && .venv/bin/pip install 'moto[server]==5.2.5'` in the repo, \
         or put moto_server on PATH"
    );
}

impl Moto {
    /// Starts moto on a free port with EC2 validation on, and waits until it answers.
    pub fn start() -> Moto {
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            match Moto::start_on(port) {
                Ok(m) => return m,
                Err(e) => last = e,
            }
        }
        panic!("moto_server did not start: {last}");
    }

    /// Starts moto on `port` (e.g. to restart it where a proxy points).
    pub fn start_on(port: u16) -> Result<Moto, String> {
        let log = std::env::temp_dir().join(format!("phoenix-moto-{port}.log"));
        let log_file = std::fs::File::create(&log).map_err(|e| format!("log file: {e}"))?;
        let err_file = log_file.try_clone().map_err(|e| format!("log file: {e}"))?;
        let child = Command::new(moto_binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_ENABLE_AMI_VALIDATION", "true")
            .env("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true")
            .env("MOTO_ENABLE_KEYPAIR_VALIDATION", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(err_file))
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", moto_binary().display()))?;
        let mut moto = Moto {
            child: Some(child),
            port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(child) = moto.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "moto_server exited with {status}: {}",
                        moto.log_tail()
                    ));
                }
            }
            if http(port, "GET", "/moto-api/data.json", Duration::from_secs(2)).is_ok() {
                moto.warm_up();
                return Ok(moto);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "moto_server did not answer on port {port} within 60s: {}",
            moto.log_tail()
        ))
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Environment for a child process (the SDK's view of the test bed), region included.
    pub fn sdk_env(&self, region: &str) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("AWS_REGION", region.into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// `POST /moto-api/reset`: forgets every resource.
    pub fn reset(&self) {
        http(
            self.port,
            "POST",
            "/moto-api/reset",
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("resetting moto: {e}"));
        self.warm_up();
    }

    /// moto builds its EC2 backend (AMIs, instance types) on the first EC2 call, which takes a
    /// second or more; doing it here keeps that out of tests with tight timeouts.
    pub fn warm_up(&self) {
        let _ = request(
            self.port,
            "POST",
            "/",
            &[(
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=warmup",
            )],
            "Action=DescribeInstances&Version=2016-11-15",
            Duration::from_secs(30),
        );
    }

    /// Kills the server (state is lost, as in a real outage of the endpoint).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a fresh server (state is lost) on a new port: reusing the old one races with
    /// other tests picking free ports. Point a proxy in front of it at [`Moto::port`] again.
    pub fn restart(&mut self) {
        self.stop();
        let fresh = Moto::start();
        *self = fresh;
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A minimal HTTP/1.1 request to 127.0.0.1:port; returns the status code.
pub fn http(port: u16, method: &str, path: &str, timeout: Duration) -> Result<u16, String> {
    request(port, method, path, &[], "", timeout)
}

/// Like [`http`], with headers and a form body.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    timeout: Duration,
) -> Result<u16, String> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout)
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    write!(s, "{head}\r\n{body}").map_err(|e| e.to_string())?;
    let _ = s.shutdown(Shutdown::Write);
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| {
            format!(
                "no HTTP status in {:?}",
                text.chars().take(80).collect::<String>()
            )
        })?;
    Ok(status)
}
