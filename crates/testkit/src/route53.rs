//! Route 53 on moto: the hosted zone an organisation already has (phoenix writes records into a
//! zone and never creates one), made the way a test makes it, with fixed dummy credentials.

/// The zone the demo environment's records go in.
pub const DEMO_ZONE: &str = "demo.example";

/// The SDK's Route 53 client for `endpoint` (moto), configured as the tests' EC2 clients are.
pub async fn client(endpoint: &str) -> aws_sdk_route53::Client {
    aws_sdk_route53::Client::new(&crate::ec2::sdk_config(endpoint).await)
}

/// Creates the hosted zone `name` and returns its id (without `/hostedzone/`).
pub async fn create_zone(endpoint: &str, name: &str) -> String {
    let out = client(endpoint)
        .await
        .create_hosted_zone()
        .name(name)
        .caller_reference(format!("testkit-{name}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("creating hosted zone {name} in moto: {e:?}"));
    out.hosted_zone()
        .map(|z| z.id().trim_start_matches("/hostedzone/").to_string())
        .unwrap_or_else(|| panic!("moto returned no hosted zone for {name}"))
}
