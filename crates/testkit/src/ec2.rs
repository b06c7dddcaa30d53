//! The one way a test builds an EC2 client for moto: the SDK's own (to change things behind phoenix's back) and
//! phoenix's (`Ec2`, to drive or observe the cloud layer), with fixed dummy credentials, the region and explicit
//! timeouts — nothing read from the machine's AWS configuration.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::config::Credentials;
use phoenix::providers::aws::{AwsOptions, Ec2};

/// The region every test uses.
pub const REGION: &str = "us-east-1";

/// The SDK configuration for the EC2 API at `endpoint` (moto, or a fault proxy in front of it).
pub async fn sdk_config(endpoint: &str) -> SdkConfig {
    sdk_config_in(endpoint, REGION).await
}

/// [`sdk_config`] for another region (moto serves every region on one endpoint).
pub async fn sdk_config_in(endpoint: &str, region: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            "test",
            "test",
            None,
            None,
            "phoenix-tests",
        ))
        .load()
        .await
}

/// The SDK's own EC2 client for `endpoint`.
pub async fn sdk_client(endpoint: &str) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&sdk_config(endpoint).await)
}

/// The SDK's own EC2 client for `endpoint` in `region`.
pub async fn sdk_client_in(endpoint: &str, region: &str) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&sdk_config_in(endpoint, region).await)
}

/// The timeouts and attempts a test's phoenix client uses unless it needs others: 2 s to connect, 10 s an
/// attempt, 30 s an operation, 3 attempts.
pub fn options() -> AwsOptions {
    AwsOptions {
        connect_timeout: Duration::from_secs(2),
        attempt_timeout: Duration::from_secs(10),
        operation_timeout: Duration::from_secs(30),
        max_attempts: 3,
        profile: None,
        endpoint_url: None,
    }
}

/// phoenix's EC2 client for `endpoint` with [`options`].
pub async fn client(endpoint: &str) -> Ec2 {
    client_with(endpoint, &options()).await
}

/// phoenix's EC2 client for `endpoint` with the given timeouts and attempts.
pub async fn client_with(endpoint: &str, opts: &AwsOptions) -> Ec2 {
    Ec2::from_sdk_config(&sdk_config(endpoint).await, opts).expect("the EC2 client builds")
}
