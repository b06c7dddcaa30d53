//! `phoenix ssh-key ENV --out PATH`: writes the private key of the env's EC2 key pair, which
//! phoenix derives from the cluster secret and keeps nowhere, to a new 0600 file the operator
//! names. The key itself is never printed.

use super::Outcome;
use crate::cli::SshKeyArgs;
use crate::error::{ExitCode, Failure};
use crate::providers::aws;
use crate::report::output::print_json;
use crate::workflow::{Context, Deployment};
use std::io::Write;
use std::path::Path;

pub async fn run(ctx: &Context, args: &SshKeyArgs) -> Outcome {
    let deployment = Deployment::open(ctx, &args.env.env, None).await?;
    let Some(kp) = deployment
        .env
        .cloud
        .as_ref()
        .and_then(|c| c.key_pair.as_ref())
    else {
        return Err(Failure::new(format!(
            "{} has no key pair (spec.cloud.keyPair)",
            deployment.env.name
        ))
        .help("declare spec.cloud.keyPair: { name: NAME } to have phoenix derive one from the cluster secret"));
    };
    if let Some(source) = &kp.public_key {
        return Err(Failure::new(format!(
            "key pair {} of {} is imported from publicKey {source}: its private key is yours, phoenix never had it",
            kp.name, deployment.env.name
        ))
        .help("use the private key that belongs to that public key"));
    }
    let secret = deployment.cluster_secret(ctx)?.ok_or_else(|| {
        Failure::new(format!(
            "{} has no cluster secret (spec.cluster.secret) to derive the key pair from",
            deployment.env.name
        ))
        .help("an env without a k3s cluster must declare spec.cloud.keyPair.publicKey")
    })?;
    let key = aws::derived_private_key(&deployment.name, &kp.name, &secret)
        .map_err(|e| Failure::from_error("cannot derive the key pair", &e))?;
    write_new_private(&args.out, key.expose().as_bytes()).map_err(|e| {
        Failure::new(format!(
            "cannot write the private key to {}",
            args.out.display()
        ))
        .cause(e.to_string())
        .help("name a path that does not exist yet, in a directory you can write (an existing file is never overwritten)")
    })?;
    let key_name = format!("{}-{}", deployment.name, kp.name);
    if ctx.json() {
        print_json(&serde_json::json!({
            "env": deployment.name,
            "keyName": key_name,
            "path": args.out,
        }));
    } else {
        crate::outln!(
            "wrote the private key of EC2 key pair {key_name} to {} (mode 0600)",
            args.out.display()
        );
    }
    Ok(ExitCode::Ok)
}

/// Creates `path` (it must not exist) with mode 0600 and writes `data`; a partial file is removed.
fn write_new_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(path)?;
    let written = file.write_all(data).and_then(|()| file.sync_all());
    if written.is_err() {
        let _ = std::fs::remove_file(path);
    }
    written
}
