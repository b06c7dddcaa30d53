//! App checks: an HTTP GET that must answer with an expected status, each request bounded by the
//! check's own timeout.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// One HTTP check of a component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCheck {
    pub url: String,
    pub expect: u16,
    /// Bound on one request (connect, headers and body).
    pub timeout: Duration,
}

impl From<&crate::env::model::Check> for HttpCheck {
    fn from(c: &crate::env::model::Check) -> Self {
        HttpCheck {
            url: c.url.clone(),
            expect: c.expect,
            timeout: c.timeout,
        }
    }
}

/// Why one GET did not pass.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("invalid check url {url:?}: expected http://HOST[:PORT]/PATH")]
    InvalidUrl { url: String },
    #[error("https checks are not supported; use an http:// url (got {url})")]
    Https { url: String },
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("request failed")]
    Request(#[source] hyper_util::client::legacy::Error),
}

/// Performs one GET and returns the status code.
pub async fn get_status(check: &HttpCheck) -> Result<u16, CheckError> {
    let uri: hyper::Uri = check.url.parse().map_err(|_| CheckError::InvalidUrl {
        url: check.url.clone(),
    })?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(CheckError::Https {
                url: check.url.clone(),
            })
        }
        _ => {
            return Err(CheckError::InvalidUrl {
                url: check.url.clone(),
            })
        }
    }
    if uri.host().is_none() {
        return Err(CheckError::InvalidUrl {
            url: check.url.clone(),
        });
    }
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = async {
        let resp = client.get(uri).await.map_err(CheckError::Request)?;
        let status = resp.status().as_u16();
        // Drain the body so the connection closes cleanly; its content is not judged.
        let _ = resp.into_body().collect().await;
        Ok(status)
    };
    match tokio::time::timeout(check.timeout, request).await {
        Ok(result) => result,
        Err(_) => Err(CheckError::Timeout(check.timeout)),
    }
}
