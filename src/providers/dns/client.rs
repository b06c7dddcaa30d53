//! The Route 53 client: the normal AWS credential chain, the same explicit timeouts and retry
//! policy as EC2 (`aws::AwsOptions`), and errors that name the endpoint and what was being done.

use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_route53::error::{ProvideErrorMetadata, SdkError};

use crate::engine::NodeError;
use crate::providers::aws::AwsOptions;

/// Route 53 is a global service whose control plane (every change, every GetChange) is in
/// us-east-1, whatever region the environment runs in (docs/dns.md).
pub const CONTROL_PLANE_REGION: &str = "us-east-1";

/// What an operator needs to know when Route 53 does not answer.
const UNREACHABLE: &str = " (Route 53 changes go through its control plane in us-east-1: while that region is out, records cannot be changed, though they keep resolving; see docs/dns.md)";

/// Route 53 answers these when a call may succeed if repeated.
const TRANSIENT_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "PriorRequestNotComplete",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "RequestTimeout",
];

/// A Route 53 call that failed.
#[derive(Debug, thiserror::Error)]
#[error("{doing}: Route 53 endpoint {endpoint}: {message}")]
pub struct DnsError {
    pub doing: String,
    pub endpoint: String,
    pub message: String,
    /// Worth another attempt (timeouts, refused connections, throttling, 5xx).
    pub transient: bool,
}

impl DnsError {
    /// An error found by phoenix itself (not an SDK error): permanent.
    pub fn refused(doing: &str, endpoint: &str, message: impl Into<String>) -> Self {
        DnsError {
            doing: doing.to_string(),
            endpoint: endpoint.to_string(),
            message: message.into(),
            transient: false,
        }
    }
}

impl From<DnsError> for NodeError {
    fn from(e: DnsError) -> Self {
        if e.transient {
            NodeError::transient(e.to_string())
        } else {
            NodeError::permanent(e.to_string())
        }
    }
}

/// A connected Route 53 client with the endpoint it talks to.
#[derive(Clone, Debug)]
pub struct Route53 {
    client: aws_sdk_route53::Client,
    endpoint: Arc<str>,
    attempt_timeout: Duration,
}

/// Loads the AWS configuration through the normal chain (`AWS_ENDPOINT_URL` is honoured, so
/// moto serves it in the tests) for the control-plane region, with the timeouts and retry
/// policy of `opts`.
pub async fn connect(opts: &AwsOptions) -> Route53 {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(opts.connect_timeout)
        .operation_attempt_timeout(opts.attempt_timeout)
        .operation_timeout(opts.operation_timeout)
        .build();
    let retry = RetryConfig::standard().with_max_attempts(opts.max_attempts.max(1));
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(CONTROL_PLANE_REGION))
        .timeout_config(timeouts.clone())
        .retry_config(retry.clone());
    if let Some(profile) = &opts.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(url) = &opts.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let config = loader.load().await;
    let endpoint = config
        .endpoint_url()
        .map(str::to_string)
        .unwrap_or_else(|| "https://route53.amazonaws.com".to_string());
    let conf = aws_sdk_route53::config::Builder::from(&config)
        .timeout_config(timeouts)
        .retry_config(retry)
        .build();
    Route53 {
        client: aws_sdk_route53::Client::from_conf(conf),
        endpoint: Arc::from(endpoint),
        attempt_timeout: opts.attempt_timeout,
    }
}

impl Route53 {
    pub fn client(&self) -> &aws_sdk_route53::Client {
        &self.client
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Converts an SDK error into a [`DnsError`] naming this endpoint and `doing`.
    pub(crate) fn err<E>(
        &self,
        doing: &str,
    ) -> impl FnOnce(SdkError<E, aws_sdk_route53::config::http::HttpResponse>) -> DnsError + '_
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let doing = doing.to_string();
        move |err| {
            let (message, transient) = match &err {
                SdkError::TimeoutError(_) => (
                    format!(
                        "no answer within {}{UNREACHABLE}",
                        crate::report::format_duration(self.attempt_timeout)
                    ),
                    true,
                ),
                SdkError::DispatchFailure(f) => (
                    match f.as_connector_error() {
                        Some(c) => {
                            format!("cannot connect: {}{UNREACHABLE}", crate::error::chain(c))
                        }
                        None => format!("cannot connect: {f:?}{UNREACHABLE}"),
                    },
                    true,
                ),
                SdkError::ResponseError(r) => (format!("unreadable answer: {r:?}"), true),
                SdkError::ConstructionFailure(f) => {
                    (format!("cannot build the request: {f:?}"), false)
                }
                SdkError::ServiceError(s) => {
                    let code = s.err().code().unwrap_or("UnknownError");
                    let message = s.err().message().unwrap_or("no message");
                    let status = s.raw().status().as_u16();
                    (
                        format!("{code}: {message}"),
                        TRANSIENT_CODES.contains(&code) || status >= 500 || status == 429,
                    )
                }
                other => (crate::error::chain(other), true),
            };
            DnsError {
                doing,
                endpoint: self.endpoint.to_string(),
                message,
                transient,
            }
        }
    }
}
