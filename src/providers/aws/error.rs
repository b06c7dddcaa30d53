//! Errors of the cloud layer: every one names what phoenix was doing (the resource) and, for API
//! failures, the EC2 endpoint; each knows whether a retry can help.

use crate::error::chain;
use std::error::Error as StdError;
use std::time::Duration;

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};

use crate::engine::NodeError;

type BoxError = Box<dyn StdError + Send + Sync>;
type HttpResponse = aws_sdk_ec2::config::http::HttpResponse;

/// An error of the cloud layer. Messages start with what phoenix was doing
/// ("creating subnet/public-a") and never contain secret values.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// The endpoint accepted the request but did not answer in time (attempt or operation timeout).
    #[error("{doing}: EC2 endpoint {endpoint} did not answer within {}", humantime::format_duration(*.timeout))]
    Timeout {
        doing: String,
        endpoint: String,
        timeout: Duration,
        #[source]
        source: BoxError,
    },
    /// No connection could be made (refused, reset, DNS, TLS, connect timeout).
    #[error("{doing}: cannot connect to EC2 endpoint {endpoint}")]
    Connect {
        doing: String,
        endpoint: String,
        #[source]
        source: BoxError,
    },
    /// The connection broke, or the answer could not be read.
    #[error("{doing}: EC2 endpoint {endpoint} sent no usable response")]
    Response {
        doing: String,
        endpoint: String,
        #[source]
        source: BoxError,
    },
    /// EC2 answered with an error code.
    #[error("{doing}: EC2 endpoint {endpoint} answered {code}: {message}")]
    Service {
        doing: String,
        endpoint: String,
        code: String,
        message: String,
        status: Option<u16>,
        transient: bool,
    },
    /// The SDK could not build the request (a bug or an invalid setting).
    #[error("{doing}: the request could not be built")]
    Request {
        doing: String,
        #[source]
        source: BoxError,
    },
    /// phoenix refuses on purpose: foreign resources in the way, an unsupported change.
    #[error("{doing}: {message}")]
    Refused { doing: String, message: String },
    /// A dependency does not exist yet, or the API returned incomplete data; retrying may help.
    #[error("{doing}: {message}")]
    NotReady { doing: String, message: String },
    /// Key material could not be read, generated or stored.
    #[error("key pair {name}: {message}")]
    Key {
        name: String,
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// Loading the AWS configuration failed.
    #[error("loading the AWS configuration: {message}")]
    Config { message: String },
}

/// EC2 error codes worth retrying: throttling, server-side trouble, and the eventual consistency
/// of EC2 (an id that was just created is not visible yet; a dependency is still being released).
const TRANSIENT_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "DependencyViolation",
    "IncorrectState",
    "IncorrectInstanceState",
    "InvalidInstanceID.NotFound",
    "InvalidVpcID.NotFound",
    "InvalidSubnetID.NotFound",
    "InvalidGroup.NotFound",
    "InvalidRouteTableID.NotFound",
    "InvalidInternetGatewayID.NotFound",
    "InvalidGatewayID.NotFound",
    "InvalidKeyPair.NotFound",
    "InvalidAssociationID.NotFound",
];

impl AwsError {
    /// Whether the same attempt may succeed later (the engine retries these with backoff).
    pub fn is_transient(&self) -> bool {
        match self {
            AwsError::Timeout { .. }
            | AwsError::Connect { .. }
            | AwsError::Response { .. }
            | AwsError::NotReady { .. } => true,
            AwsError::Service { transient, .. } => *transient,
            AwsError::Request { .. }
            | AwsError::Refused { .. }
            | AwsError::Key { .. }
            | AwsError::Config { .. } => false,
        }
    }

    /// The EC2 error code, for service errors.
    pub fn code(&self) -> Option<&str> {
        match self {
            AwsError::Service { code, .. } => Some(code),
            _ => None,
        }
    }

    pub(crate) fn refused(doing: impl Into<String>, message: impl Into<String>) -> Self {
        AwsError::Refused {
            doing: doing.into(),
            message: message.into(),
        }
    }

    pub(crate) fn not_ready(doing: impl Into<String>, message: impl Into<String>) -> Self {
        AwsError::NotReady {
            doing: doing.into(),
            message: message.into(),
        }
    }

    /// Converts an SDK error, classifying it and naming the endpoint and what was being done.
    pub(crate) fn from_sdk<E>(
        err: SdkError<E, HttpResponse>,
        doing: &str,
        endpoint: &str,
        attempt_timeout: Duration,
    ) -> Self
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        let doing = doing.to_string();
        let endpoint = endpoint.to_string();
        match err {
            SdkError::TimeoutError(_) => AwsError::Timeout {
                doing,
                endpoint,
                timeout: attempt_timeout,
                source: "the SDK timeout expired".into(),
            },
            SdkError::DispatchFailure(failure) => {
                let timed_out = failure.is_timeout();
                let source: BoxError = match failure.as_connector_error() {
                    Some(connector) => chain(connector).into(),
                    None => format!("{failure:?}").into(),
                };
                if timed_out {
                    AwsError::Connect {
                        doing,
                        endpoint,
                        source: format!("connect timed out: {}", chain(source.as_ref())).into(),
                    }
                } else {
                    AwsError::Connect {
                        doing,
                        endpoint,
                        source,
                    }
                }
            }
            SdkError::ResponseError(response) => AwsError::Response {
                doing,
                endpoint,
                source: format!("{response:?}").into(),
            },
            SdkError::ConstructionFailure(failure) => AwsError::Request {
                doing,
                source: format!("{failure:?}").into(),
            },
            SdkError::ServiceError(service) => {
                let status = Some(service.raw().status().as_u16());
                let code = service.err().code().unwrap_or("UnknownError").to_string();
                let message = service.err().message().unwrap_or("no message").to_string();
                let transient = TRANSIENT_CODES.contains(&code.as_str())
                    || status.is_some_and(|s| s >= 500 || s == 429);
                AwsError::Service {
                    doing,
                    endpoint,
                    code,
                    message,
                    status,
                    transient,
                }
            }
            other => AwsError::Response {
                doing,
                endpoint,
                source: format!("{other:?}").into(),
            },
        }
    }

    /// The engine's view: transient errors are retried with backoff, permanent ones fail the node.
    pub fn into_node_error(self) -> NodeError {
        let message = chain(&self);
        if self.is_transient() {
            NodeError::transient(message)
        } else {
            NodeError::permanent(message)
        }
    }
}

impl From<AwsError> for NodeError {
    fn from(err: AwsError) -> Self {
        err.into_node_error()
    }
}
