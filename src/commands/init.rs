//! `phoenix init NAME`: writes a minimal environment into the working tree of the repository around
//! the current directory (or `--repo PATH`) that validates as written: an existing cluster by
//! default, or a small k3s cluster on AWS with `--aws REGION`. Templates are not copied: the
//! built-in ones serve until the repository has a file of the same path.

use super::Outcome;
use crate::cli::InitArgs;
use crate::error::{ExitCode, Failure};
use crate::report::output::{print_json, FilesDoc};
use crate::workflow::Context;
use std::path::{Path, PathBuf};

/// The files of the new environment, by repository path.
fn files(args: &InitArgs) -> Vec<(String, String)> {
    let name = &args.name;
    let dir = format!("environments/{name}");
    let secret_var: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    let spec = match &args.aws {
        Some(region) => format!(
            "  cloud:\n    provider: aws\n    region: {region}\n    network:\n      cidr: 10.40.0.0/16\n      subnets:\n        - {{ name: public-a, cidr: 10.40.1.0/24, zone: {region}a, public: true }}\n    securityGroups:\n      - name: cluster\n        ingress:\n          - {{ port: 6443, from: 0.0.0.0/0, description: kubernetes API }}\n          - {{ protocol: all, ports: all, fromGroup: cluster, description: node to node }}\n    instances:\n      - name: server\n        role: server\n        count: 1\n        type: t3.medium\n        image: {{ owner: amazon, name: \"al2023-ami-2023*-kernel-6.1-x86_64\" }}\n        subnet: public-a\n        securityGroups: [cluster]\n  cluster:\n    # The user-data comes from the built-in templates/cloud-init/; a file of the same path in\n    # this repository overrides it.\n    distribution: k3s\n    version: v1.37.2+k3s1\n    endpoint: public\n    # The cluster's CAs and join tokens derive from this secret (at least 32 random characters, e.g.\n    # `openssl rand -hex 32`): keep it in your secret store, never in Git.\n    secret: env:PHOENIX_{secret_var}_CLUSTER_SECRET\n"
        ),
        None => {
            let mut existing = format!("kubeconfig: {}", args.kubeconfig);
            if let Some(context) = &args.context {
                existing.push_str(&format!(", context: {context}"));
            }
            format!(
                "  cluster:\n    # A kubeconfig on the machine running phoenix (it holds credentials: not in Git).\n    existing: {{ {existing} }}\n"
            )
        }
    };
    vec![
        (
            format!("{dir}/environment.yaml"),
            format!(
                "# Written by `phoenix init`; the schema is in phoenix's docs/environment.md.\napiVersion: phoenix/v1\nkind: Environment\nmetadata:\n  name: {name}\nspec:\n  recoveryObjective: 30m\n{spec}  apps:\n    - name: hello\n      path: apps/hello\n      namespace: {name}\n"
            ),
        ),
        (
            format!("{dir}/apps/hello/namespace.yaml"),
            format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n"),
        ),
        (
            format!("{dir}/apps/hello/configmap.yaml.j2"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: hello\n  namespace: {{ component.namespace }}\ndata:\n  environment: \"{{ env.name }}\"\n".to_string(),
        ),
    ]
}

/// The working tree to write into: `--repo PATH`, else the repository around the current
/// directory.
fn work_tree(ctx: &Context) -> Result<PathBuf, Failure> {
    let start = match &ctx.source.repo {
        Some(r) if r.contains("://") => {
            return Err(Failure::new(format!(
                "phoenix init writes files into a working tree, and {r} is a URL"
            ))
            .help("run it inside a clone, or pass --repo PATH"))
        }
        Some(r) => PathBuf::from(r),
        None => std::env::current_dir()
            .map_err(|e| Failure::from_error("cannot read the current directory", &e))?,
    };
    let repo = git2::Repository::discover(&start).map_err(|e| {
        Failure::from_error(
            format!("{} is not inside a Git repository", start.display()),
            &e,
        )
        .help("run `git init` first: phoenix reads environments from commits")
    })?;
    repo.workdir().map(Path::to_path_buf).ok_or_else(|| {
        Failure::new(format!(
            "{} is a bare repository: phoenix init needs a working tree",
            repo.path().display()
        ))
    })
}

pub fn run(ctx: &Context, args: &InitArgs) -> Outcome {
    crate::env::load::check_name(&args.name).map_err(Failure::new)?;
    let root = work_tree(ctx)?;
    let files = files(args);
    // Nothing is overwritten: an existing file is the user's.
    if let Some((path, _)) = files.iter().find(|(p, _)| root.join(p).exists()) {
        return Err(Failure::new(format!(
            "{} already exists; phoenix init writes a new environment and overwrites nothing",
            root.join(path).display()
        ))
        .help("choose another name, or remove the directory first"));
    }
    for (path, text) in &files {
        let full = root.join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                Failure::from_error(format!("cannot create {}", parent.display()), &e)
            })?;
        }
        std::fs::write(&full, text)
            .map_err(|e| Failure::from_error(format!("cannot write {}", full.display()), &e))?;
    }
    if ctx.json() {
        print_json(&FilesDoc::new(
            Some(&args.name),
            files.iter().map(|(p, _)| p.to_string()).collect(),
        ));
    } else {
        for (path, _) in &files {
            crate::outln!("wrote {path}");
        }
        crate::outln!(
            "next: git add environments/{0} && git commit -m \"environment {0}\", then phoenix validate {0} and phoenix plan {0}",
            args.name
        );
    }
    Ok(ExitCode::Ok)
}
