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
    #[error("{doing}: EC2 endpoint {endpoint} did not answer within {}", crate::report::format_duration(*.timeout))]
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
    /// EC2 answered with an error code. `hint` says what to do about it (a quota: which one,
    /// how to see what uses it and how to raise it), or is empty.
    #[error("{doing}: EC2 endpoint {endpoint} answered {code}: {message}{hint}")]
    Service {
        doing: String,
        endpoint: String,
        code: String,
        message: String,
        status: Option<u16>,
        transient: bool,
        hint: String,
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

/// Errors that clear up by themselves, but not within seconds and not always: worth a few
/// retries (up to [`BOUNDED_ATTEMPTS`] attempts of the node), then a clear error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bounded {
    /// EC2 has no capacity of this instance type in this zone right now.
    Capacity,
    /// An instance profile (or its role) just made is not visible to EC2 yet: IAM is
    /// eventually consistent, usually within a minute or two.
    IamPropagation,
}

/// How many attempts a [`Bounded`] error gets before the node fails with a clear message.
pub const BOUNDED_ATTEMPTS: u32 = 5;

const CAPACITY_CODES: &[&str] = &[
    "InsufficientInstanceCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "InsufficientCapacityOnHost",
];

/// EC2 quota errors: (error code, the quota's name in Service Quotas, its service and quota
/// code, the command that lists what uses it).
const QUOTAS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "VpcLimitExceeded",
        "VPCs per Region",
        "vpc",
        "L-F678F1CE",
        "aws ec2 describe-vpcs",
    ),
    (
        "InternetGatewayLimitExceeded",
        "Internet gateways per Region",
        "vpc",
        "L-A4707A72",
        "aws ec2 describe-internet-gateways",
    ),
    (
        "SubnetLimitExceeded",
        "Subnets per VPC",
        "vpc",
        "L-407747CB",
        "aws ec2 describe-subnets --filters Name=vpc-id,Values=VPC",
    ),
    (
        "RouteTableLimitExceeded",
        "Route tables per VPC",
        "vpc",
        "L-589F43AA",
        "aws ec2 describe-route-tables --filters Name=vpc-id,Values=VPC",
    ),
    (
        "SecurityGroupLimitExceeded",
        "VPC security groups per Region",
        "vpc",
        "L-E79EC296",
        "aws ec2 describe-security-groups",
    ),
    (
        "RulesPerSecurityGroupLimitExceeded",
        "Inbound or outbound rules per security group",
        "vpc",
        "L-0EA8095F",
        "aws ec2 describe-security-group-rules --filters Name=group-id,Values=GROUP",
    ),
    (
        "InstanceLimitExceeded",
        "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances (vCPUs)",
        "ec2",
        "L-1216C47A",
        "aws ec2 describe-instances --filters Name=instance-state-name,Values=pending,running",
    ),
    (
        "VcpuLimitExceeded",
        "Running On-Demand instances of this family (vCPUs)",
        "ec2",
        "L-1216C47A",
        "aws ec2 describe-instances --filters Name=instance-state-name,Values=pending,running",
    ),
    (
        "AddressLimitExceeded",
        "EC2-VPC Elastic IPs",
        "ec2",
        "L-0263D0A3",
        "aws ec2 describe-addresses",
    ),
    (
        "KeyPairLimitExceeded",
        "Key pairs per Region",
        "ec2",
        "L-0B0B8C4E",
        "aws ec2 describe-key-pairs",
    ),
];

/// What to do about an error code phoenix knows more about than EC2's message says.
fn hint_for(code: &str) -> String {
    match QUOTAS.iter().find(|q| q.0 == code) {
        Some((_, name, service, quota, list)) => format!(
            "; the account's quota \"{name}\" (Service Quotas {service}/{quota}) in this region is used up: see what uses it with `{list}`, delete what is no longer needed (`phoenix list` shows drill and ephemeral copies, `phoenix gc` removes expired ones) or raise it with `aws service-quotas request-service-quota-increase --service-code {service} --quota-code {quota} --desired-value N`"
        ),
        None => String::new(),
    }
}

/// Whether `code`/`message` is one of the [`Bounded`] errors.
pub fn bounded_kind(code: &str, message: &str) -> Option<Bounded> {
    if CAPACITY_CODES.contains(&code) {
        return Some(Bounded::Capacity);
    }
    let m = message.to_ascii_lowercase();
    let iam = (code == "InvalidParameterValue" || code == "InvalidParameterCombination")
        && (m.contains("iam instance profile") || m.contains("iaminstanceprofile"));
    iam.then_some(Bounded::IamPropagation)
}

impl AwsError {
    /// The [`Bounded`] kind of a service error, if it is one.
    pub fn bounded(&self) -> Option<Bounded> {
        match self {
            AwsError::Service { code, message, .. } => bounded_kind(code, message),
            _ => None,
        }
    }

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
                    || bounded_kind(&code, &message).is_some()
                    || status.is_some_and(|s| s >= 500 || s == 429);
                let hint = hint_for(&code);
                AwsError::Service {
                    doing,
                    endpoint,
                    code,
                    message,
                    status,
                    transient,
                    hint,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_and_iam_propagation_are_bounded_quotas_are_named() {
        assert_eq!(
            bounded_kind(
                "InsufficientInstanceCapacity",
                "We currently do not have sufficient t3.medium capacity"
            ),
            Some(Bounded::Capacity)
        );
        assert_eq!(
            bounded_kind(
                "InvalidParameterValue",
                "Value (nodes) for parameter iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name"
            ),
            Some(Bounded::IamPropagation)
        );
        assert_eq!(bounded_kind("InvalidParameterValue", "bad CIDR"), None);
        assert_eq!(
            bounded_kind(
                "VpcLimitExceeded",
                "The maximum number of VPCs has been reached."
            ),
            None
        );
        let hint = hint_for("VpcLimitExceeded");
        assert!(
            hint.contains("VPCs per Region") && hint.contains("L-F678F1CE"),
            "{hint}"
        );
        assert!(hint.contains("aws ec2 describe-vpcs"), "{hint}");
        assert!(hint_for("InvalidParameterValue").is_empty());
    }
}
