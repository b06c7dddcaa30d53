//! A loopback HTTP/1.1 proxy in front of moto that rewrites the body of the first `hold` answers
//! to the requests a test picks — how a test holds a state moto never reports (a snapshot
//! `pending`, a Route 53 change `PENDING`). One request per connection (`Connection: close`
//! upstream); everything else passes unchanged.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Which requests are rewritten: given the request head (request line and headers) and body.
pub type Matches = fn(head: &str, body: &str) -> bool;
/// The rewrite of a matching answer's body.
pub type Rewrite = fn(body: &str) -> String;

/// The proxy; its thread lives as long as the test process.
pub struct RewriteProxy {
    port: u16,
    rewritten: Arc<AtomicUsize>,
}

impl RewriteProxy {
    /// Listens on 127.0.0.1 (an ephemeral port) and forwards to `backend`, rewriting the first
    /// `hold` answers to requests that `matches` with `rewrite`.
    pub fn start(backend: u16, hold: usize, matches: Matches, rewrite: Rewrite) -> RewriteProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the rewriting proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let rewritten = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&rewritten);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                let counter = Arc::clone(&counter);
                std::thread::spawn(move || {
                    serve(client, backend, hold, &counter, matches, rewrite);
                });
            }
        });
        RewriteProxy { port, rewritten }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// How many matching requests were seen (rewritten or, past `hold`, passed).
    pub fn matched(&self) -> usize {
        self.rewritten.load(Ordering::SeqCst)
    }
}

fn serve(
    mut client: TcpStream,
    backend: u16,
    hold: usize,
    counter: &AtomicUsize,
    matches: Matches,
    rewrite: Rewrite,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = client.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = client.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
    // Forward with Connection: close, and read the whole answer.
    let head_out = without_header(&head, "connection:") + "Connection: close\r\n\r\n";
    let Ok(mut up) = TcpStream::connect(("127.0.0.1", backend)) else {
        return;
    };
    let _ = up.write_all(head_out.as_bytes());
    let _ = up.write_all(&buf[head_end..]);
    let mut answer = Vec::new();
    let _ = up.read_to_end(&mut answer);
    if matches(&head, &body) && counter.fetch_add(1, Ordering::SeqCst) < hold {
        let text = String::from_utf8_lossy(&answer).to_string();
        if let Some(split) = text.find("\r\n\r\n") {
            let (h, b) = text.split_at(split + 4);
            let b = rewrite(b);
            let h = without_header(h, "content-length:");
            answer = format!("{h}Content-Length: {}\r\n\r\n{b}", b.len()).into_bytes();
        }
    }
    let _ = client.write_all(&answer);
}

/// The lines of an HTTP head (CRLF-terminated) without the header `name` (lowercase, with the
/// colon) and without the blank line that ends it.
fn without_header(head: &str, name: &str) -> String {
    head.lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with(name) && !l.is_empty())
        .map(|l| format!("{l}\r\n"))
        .collect()
}
