//! The EC2 client: the normal AWS credential chain, explicit timeouts and the one retry policy.

use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};

use super::error::AwsError;

/// The SDK's retry policy for every EC2 call, named in one place: the SDK's *standard* mode
/// (exponential backoff with jitter; retries throttling such as `RequestLimitExceeded`, 5xx
/// answers, and transient I/O errors) with [`AwsOptions::max_attempts`] attempts per call.
/// What is still failing after that goes back to the engine, which retries transient errors
/// with its own named backoff (`engine::Policy`) until the node timeout.
pub const SDK_RETRY: &str = "sdk-standard";

/// Run-time settings of the EC2 connection (not part of the environment definition).
#[derive(Clone, Debug)]
pub struct AwsOptions {
    /// Time to establish a TCP/TLS connection.
    pub connect_timeout: Duration,
    /// Time for one HTTP attempt, answer included.
    pub attempt_timeout: Duration,
    /// Time for one API call over all its SDK retries.
    pub operation_timeout: Duration,
    /// Attempts per API call in the SDK's standard retry mode ([`SDK_RETRY`]).
    pub max_attempts: u32,
    /// A named profile; `None` uses `AWS_PROFILE` or the default profile.
    pub profile: Option<String>,
    /// Overrides the endpoint; `None` uses `AWS_ENDPOINT_URL` (or the real EC2 endpoint).
    pub endpoint_url: Option<String>,
}

impl Default for AwsOptions {
    fn default() -> Self {
        AwsOptions {
            connect_timeout: Duration::from_secs(3),
            attempt_timeout: Duration::from_secs(20),
            operation_timeout: Duration::from_secs(60),
            max_attempts: 3,
            profile: None,
            endpoint_url: None,
        }
    }
}

impl AwsOptions {
    fn timeout_config(&self) -> TimeoutConfig {
        TimeoutConfig::builder()
            .connect_timeout(self.connect_timeout)
            .operation_attempt_timeout(self.attempt_timeout)
            .operation_timeout(self.operation_timeout)
            .build()
    }

    fn retry_config(&self) -> RetryConfig {
        RetryConfig::standard().with_max_attempts(self.max_attempts.max(1))
    }
}

/// A connected EC2 client for one region, with the endpoint it talks to (named in errors).
#[derive(Clone, Debug)]
pub struct Ec2 {
    client: aws_sdk_ec2::Client,
    endpoint: Arc<str>,
    region: Arc<str>,
    attempt_timeout: Duration,
}

/// Loads the AWS configuration through the normal chain (environment, profiles, SSO, ...;
/// `AWS_ENDPOINT_URL` is honoured) for `region`, with the timeouts and retry policy of `opts`.
pub async fn connect(region: &str, opts: &AwsOptions) -> Result<Ec2, AwsError> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .timeout_config(opts.timeout_config())
        .retry_config(opts.retry_config());
    if let Some(profile) = &opts.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(url) = &opts.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let config = loader.load().await;
    Ec2::from_sdk_config(&config, opts)
}

impl Ec2 {
    /// Builds the client from an already loaded configuration (tests pass static credentials
    /// this way); the timeouts and retry policy of `opts` replace the configuration's.
    pub fn from_sdk_config(config: &SdkConfig, opts: &AwsOptions) -> Result<Ec2, AwsError> {
        let region = config
            .region()
            .map(|r| r.to_string())
            .ok_or_else(|| AwsError::Config {
                message: "no region is set".into(),
            })?;
        let ec2_config = aws_sdk_ec2::config::Builder::from(config)
            .timeout_config(opts.timeout_config())
            .retry_config(opts.retry_config())
            .build();
        let endpoint = config
            .endpoint_url()
            .map(str::to_string)
            .unwrap_or_else(|| format!("https://ec2.{region}.amazonaws.com"));
        Ok(Ec2 {
            client: aws_sdk_ec2::Client::from_conf(ec2_config),
            endpoint: Arc::from(endpoint),
            region: Arc::from(region),
            attempt_timeout: opts.attempt_timeout,
        })
    }

    /// The endpoint URL requests go to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// The underlying SDK client, for callers that need an operation phoenix does not wrap.
    pub fn client(&self) -> &aws_sdk_ec2::Client {
        &self.client
    }

    /// Converts an SDK error into an [`AwsError`] naming this endpoint and `doing`.
    pub(crate) fn err<E>(
        &self,
        doing: &str,
    ) -> impl FnOnce(SdkError<E, aws_sdk_ec2::config::http::HttpResponse>) -> AwsError + '_
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let doing = doing.to_string();
        move |err| AwsError::from_sdk(err, &doing, &self.endpoint, self.attempt_timeout)
    }
}
