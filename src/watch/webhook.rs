//! Webhook delivery: Slack-compatible `{"text": ...}` POSTs with a timeout per attempt and a
//! named backoff between attempts, from a worker task so the watch loop never waits on them.
//! The URL usually carries a secret token, so only its host is ever shown.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::engine::backoff::Policy;
use crate::http::{ConnectorError, Roots};

/// Errors of webhook configuration and delivery. None of them contains the URL beyond its host.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook URL is not a valid absolute http(s) URL (expected e.g. https://hooks.example.com/services/...)")]
    InvalidUrl,
    #[error("webhook URL for {host} has user:password@ credentials, which are not supported; put the token in the path or query")]
    Credentials { host: String },
    #[error("loading the system's root certificates for the webhook to {host}")]
    Roots {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("building the TLS configuration for the webhook")]
    Tls(#[source] rustls::Error),
    #[error("webhook {host} did not answer within {timeout:?}")]
    Timeout { host: String, timeout: Duration },
    #[error("webhook {host}: request failed: {message}")]
    Request { host: String, message: String },
    #[error("webhook {host} answered {status}")]
    Status { host: String, status: StatusCode },
}

impl WebhookError {
    /// Whether another attempt may succeed: timeouts, connection failures, 429 and 5xx.
    fn is_transient(&self) -> bool {
        match self {
            WebhookError::Timeout { .. } | WebhookError::Request { .. } => true,
            WebhookError::Status { status, .. } => {
                *status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
            }
            _ => false,
        }
    }
}

/// A webhook endpoint. `Display` and `Debug` show the host only.
#[derive(Clone)]
pub struct Webhook {
    uri: Uri,
    host: String,
}

impl Webhook {
    /// Parses an `http://` or `https://` URL. The error never repeats the URL.
    pub fn parse(url: &str) -> Result<Webhook, WebhookError> {
        let uri: Uri = url.trim().parse().map_err(|_| WebhookError::InvalidUrl)?;
        let scheme_ok = matches!(uri.scheme_str(), Some("http") | Some("https"));
        let authority = uri.authority().ok_or(WebhookError::InvalidUrl)?;
        if !scheme_ok || authority.host().is_empty() {
            return Err(WebhookError::InvalidUrl);
        }
        let host = match authority.port() {
            Some(port) => format!("{}:{}", authority.host(), port),
            None => authority.host().to_string(),
        };
        if authority.as_str().contains('@') {
            return Err(WebhookError::Credentials { host });
        }
        Ok(Webhook { uri, host })
    }

    /// `host[:port]`, safe to print.
    pub fn host(&self) -> &str {
        &self.host
    }

    fn is_https(&self) -> bool {
        self.uri.scheme_str() == Some("https")
    }
}

impl fmt::Display for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host)
    }
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Webhook({})", self.host)
    }
}

/// Delivery settings.
#[derive(Clone, Copy, Debug)]
pub struct DeliveryOptions {
    /// Each attempt (connect, send, read the answer) must finish within this.
    pub attempt_timeout: Duration,
    /// Attempts per message, the first included.
    pub attempts: u32,
    pub backoff: Policy,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        DeliveryOptions {
            attempt_timeout: Duration::from_secs(10),
            attempts: 4,
            backoff: Policy::STANDARD,
        }
    }
}

/// A client for one webhook.
#[derive(Clone)]
pub struct WebhookClient {
    webhook: Webhook,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    opts: DeliveryOptions,
}

impl WebhookClient {
    /// Builds the HTTP(S) client: rustls with the ring provider, the system's roots for an
    /// `https` URL (none are needed for `http`).
    pub fn new(webhook: Webhook, opts: DeliveryOptions) -> Result<Self, WebhookError> {
        let roots = if webhook.is_https() {
            Roots::Native
        } else {
            Roots::Store(rustls::RootCertStore::empty())
        };
        let connector = crate::http::connector(roots).map_err(|e| match e {
            ConnectorError::Roots(source) => WebhookError::Roots {
                host: webhook.host.clone(),
                source,
            },
            ConnectorError::Tls(e) => WebhookError::Tls(e),
        })?;
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(WebhookClient {
            webhook,
            client,
            opts,
        })
    }

    pub fn webhook(&self) -> &Webhook {
        &self.webhook
    }

    /// Posts `{"text": text}`, retrying transient failures; returns the attempts made.
    pub async fn post(&self, text: &str) -> Result<u32, (u32, WebhookError)> {
        let body = Bytes::from(serde_json::json!({ "text": text }).to_string());
        let attempts = self.opts.attempts.max(1);
        let mut attempt = 1;
        loop {
            match self.attempt(body.clone()).await {
                Ok(()) => return Ok(attempt),
                Err(err) if err.is_transient() && attempt < attempts => {
                    tokio::time::sleep(self.opts.backoff.delay(attempt)).await;
                    attempt += 1;
                }
                Err(err) => return Err((attempt, err)),
            }
        }
    }

    async fn attempt(&self, body: Bytes) -> Result<(), WebhookError> {
        let host = || self.webhook.host.clone();
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.webhook.uri.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("phoenix/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
            .map_err(|_| WebhookError::InvalidUrl)?;
        let exchange = async {
            let response =
                self.client
                    .request(request)
                    .await
                    .map_err(|e| WebhookError::Request {
                        host: host(),
                        // hyper's errors name the failure kind and the socket address at most,
                        // never the request URI, so the token cannot leak through the chain.
                        message: crate::error::chain(&e),
                    })?;
            let status = response.status();
            // Read the answer so the connection can be reused; its content is not needed.
            let _ = response.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(WebhookError::Status {
                    host: host(),
                    status,
                })
            }
        };
        match tokio::time::timeout(self.opts.attempt_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(WebhookError::Timeout {
                host: host(),
                timeout: self.opts.attempt_timeout,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_shows_only_the_host() {
        let w = Webhook::parse("https://hooks.example.com/services/T000/B000/SECRETTOKEN")
            .expect("valid");
        assert_eq!(w.host(), "hooks.example.com");
        assert_eq!(w.to_string(), "hooks.example.com");
        assert!(!format!("{w:?}").contains("SECRET"));
        let w = Webhook::parse("http://127.0.0.1:8080/hook?token=s3cr3t").expect("valid");
        assert_eq!(w.host(), "127.0.0.1:8080");
    }

    #[test]
    fn parse_rejects_without_repeating_the_url() {
        for bad in [
            "ftp://x/secret-a",
            "not a url secret-b",
            "/relative/secret-c",
            "https:///secret-d",
        ] {
            let err = Webhook::parse(bad).expect_err(bad).to_string();
            assert!(!err.contains("secret"), "{err}");
        }
        let err = Webhook::parse("https://user:pw-secret@hooks.example.com/x")
            .expect_err("credentials")
            .to_string();
        assert!(
            err.contains("hooks.example.com") && !err.contains("pw-secret"),
            "{err}"
        );
    }

    #[test]
    fn transient_errors() {
        let status = |s: u16| WebhookError::Status {
            host: "h".into(),
            status: StatusCode::from_u16(s).expect("status"),
        };
        assert!(status(503).is_transient());
        assert!(status(429).is_transient());
        assert!(!status(404).is_transient());
        assert!(!status(400).is_transient());
    }
}
