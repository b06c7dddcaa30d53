//! Command-line types only. Values are checked here; the objects that do work are built later,
//! once all parsing is done (see `commands`).

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "phoenix",
    version,
    about = "Rebuild a whole environment from a Git commit: EC2 network and instances, Kubernetes, add-ons, apps",
    long_about = None,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Repository to read from: a path, or a URL cloned into the cache (default: the repository
    /// around the current directory)
    #[arg(long, global = true, value_name = "PATH|URL", env = "PHOENIX_REPO")]
    pub repo: Option<String>,

    /// Branch, tag or commit to read (default: HEAD)
    #[arg(long = "ref", global = true, value_name = "REF")]
    pub reference: Option<String>,

    /// Read the commit even though the working tree has uncommitted changes
    #[arg(long, global = true)]
    pub allow_dirty: bool,

    /// Trusted SSH public keys (one per line, or allowed_signers format); requires every commit
    /// to carry a valid SSH signature by one of them
    #[arg(long, global = true, value_name = "FILE", env = "PHOENIX_TRUSTED_KEYS")]
    pub trusted_keys: Option<PathBuf>,

    /// Refuse unsigned commits (keys from --trusted-keys or the commit's .phoenix/trusted-keys)
    #[arg(long, global = true)]
    pub require_signed: bool,

    /// Output format (`markdown`: the pull-request comment of `plan ENV --against REF` only)
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Human)]
    pub output: Output,

    /// State directory for kubeconfigs, keys, audit records and the clone cache
    /// (default: $PHOENIX_HOME, else the user's data directory)
    #[arg(long, global = true, value_name = "DIR", env = "PHOENIX_HOME")]
    pub home: Option<PathBuf>,

    /// Directory `file:` secret references are read from (relative names only; nothing outside it
    /// is read, symlinks included) (default: ~/.config/phoenix/secrets)
    #[arg(long, global = true, value_name = "DIR", env = "PHOENIX_SECRETS_DIR")]
    pub secrets_dir: Option<PathBuf>,

    /// Kubernetes API endpoint instead of the one derived from the server instance
    /// (https://ADDRESS:6443): a tunnel, a load balancer, or the test control plane's router. `{env}` is replaced by
    /// the environment's effective name, e.g. http://127.0.0.1:PORT/clusters/{env}
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "PHOENIX_CLUSTER_ENDPOINT"
    )]
    pub cluster_endpoint: Option<String>,

    /// Plain progress lines (every step, what each node waits for, a heartbeat) instead of
    /// progress bars, also on a terminal
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Human,
    Json,
    /// A pull-request comment; only `plan ENV --against REF` writes one.
    Markdown,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check an environment offline: schema, references, templates, dependency graph
    Validate(EnvArg),
    /// Show what a rebuild would do, layer by layer
    Plan(PlanArgs),
    /// Print the rendered user-data and manifests of an environment (secrets redacted)
    Render(RenderArgs),
    /// Converge every layer in order: cloud, cluster, addons, apps
    Rebuild(RebuildArgs),
    /// Tear an environment down in reverse layer order (asks for confirmation)
    Destroy(DestroyArgs),
    /// Compare Git with the live system in every layer: exit 0 in sync, 2 drift, 1 not checked
    Diff(DiffArgs),
    /// Run the drift agent: check every interval, serve /metrics, alert a webhook, optionally heal
    Watch(WatchArgs),
    /// Bring up an ephemeral copy of an environment under a suffixed name, with an expiry
    Up(UpArgs),
    /// Tear down every drill or ephemeral copy whose expiry has passed
    Gc(GcArgs),
    /// List drill and ephemeral copies: name, age, expiry, commit
    List,
    /// Snapshot the env's data volumes, copy the snapshots to the backup regions, prune old ones
    Backup(BackupArgs),
    /// Rehearse recovery: rebuild an isolated copy, verify it, time it, tear it down, report
    Drill(DrillArgs),
    /// Print a recovery runbook for an environment, generated from its graph and last drill
    Runbook(RunbookArgs),
    /// Write the private key of the env's EC2 key pair (derived from the cluster secret) to a new
    /// 0600 file, for SSH
    SshKey(SshKeyArgs),
    /// List past runs of an environment from the audit trail
    History(HistoryArgs),
    /// Print a shell completion script for phoenix to stdout
    Completions(CompletionsArgs),
    /// Print the man pages of phoenix and its subcommands (roff) to stdout, or write them to --dir
    Man(ManArgs),
    /// Write a minimal environment (an existing cluster, or k3s on AWS) into the working tree
    Init(InitArgs),
    /// Fetch the Helm charts the environment names by repository URL into vendor/charts/
    /// (digest-checked), to commit so a rebuild needs only Git
    Vendor(EnvArg),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Only these layers (comma-separated: cloud,cluster,addons,apps); the others count as
    /// converged for the gates
    #[arg(long, value_delimiter = ',', value_name = "LAYERS", value_parser = layer_parser())]
    pub layers: Vec<crate::engine::Layer>,
    /// Nodes in flight at once
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    #[command(flatten)]
    pub env: EnvArg,
    #[command(flatten)]
    pub failover: FailoverArg,
    #[command(flatten)]
    pub run: RunArgs,
    /// Take fields another field manager holds back even in components that set
    /// `forceConflicts: false` (elsewhere phoenix takes them back on objects it owns by default)
    #[arg(long)]
    pub force_conflicts: bool,
    /// Where a missing data volume is restored from: a snapshot id (snap-...; for the volume it
    /// was taken of) or an RFC 3339 time (the newest completed snapshot at or before it).
    /// Default: the newest completed snapshot the env owns
    #[arg(long, value_name = "SNAPSHOT|TIME", value_parser = parse_restore_point)]
    pub restore_point: Option<crate::providers::aws::RestorePoint>,
    /// Point DNS records of spec.dns at this env even where phoenix does not own them (no
    /// ownership TXT record for this env); each one taken over is recorded in the audit trail
    #[arg(long)]
    pub take_over_dns: bool,
}

fn parse_restore_point(text: &str) -> Result<crate::providers::aws::RestorePoint, String> {
    crate::providers::aws::RestorePoint::parse(text)
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    #[command(flatten)]
    pub env: EnvArg,
    #[command(flatten)]
    pub failover: FailoverArg,
    /// Do not ask: destroy without typing the environment name
    #[arg(long)]
    pub yes: bool,
    /// Destroy the ephemeral copy NAME of ENV (made by `phoenix up ENV --ephemeral NAME`)
    #[arg(long, value_name = "NAME")]
    pub ephemeral: Option<String>,
    /// Nodes in flight at once
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Delete the data volumes without taking a final snapshot of each first (snapshots are
    /// never deleted by destroy either way)
    #[arg(long)]
    pub skip_final_snapshot: bool,
}

/// `--failover` of rebuild, plan, diff, destroy, drill and backup.
#[derive(Debug, Args)]
pub struct FailoverArg {
    /// The same env in the region its spec.failover names (zones, blocks, instance types and
    /// AMI ids as declared there) instead of spec.cloud.region; without it, the primary region
    #[arg(long)]
    pub failover: bool,
}

impl Command {
    /// Whether the command runs against the env's failover region (`--failover`).
    pub fn failover(&self) -> bool {
        match self {
            Command::Rebuild(a) => a.failover.failover,
            Command::Destroy(a) => a.failover.failover,
            Command::Diff(a) => a.failover.failover,
            Command::Drill(a) => a.failover.failover,
            Command::Plan(a) => a.failover.failover,
            Command::Backup(a) => a.failover.failover,
            _ => false,
        }
    }
}

#[derive(Debug, Args)]
pub struct EnvArg {
    /// Environment name (a directory under environments/)
    #[arg(value_name = "ENV")]
    pub env: String,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    #[command(flatten)]
    pub env: EnvArg,
    #[command(flatten)]
    pub failover: FailoverArg,
    /// Also write Prometheus text metrics (node-exporter textfile format) to this file
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
    /// Only these layers (comma-separated: cloud,cluster,addons,apps); the others are not
    /// checked or shown
    #[arg(long, value_delimiter = ',', value_name = "LAYERS", value_parser = layer_parser())]
    pub layers: Vec<crate::engine::Layer>,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Environment name (a directory under environments/); or --all
    #[arg(
        value_name = "ENV",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub env: Option<String>,
    /// Watch every environment in the commit (re-read, and fetched for a URL --repo, every
    /// interval)
    #[arg(long)]
    pub all: bool,
    /// With --all: only environments whose metadata.labels have LABEL=VALUE (repeatable: all
    /// must match)
    #[arg(long, value_name = "LABEL=VALUE", value_parser = parse_selector)]
    pub selector: Vec<(String, String)>,
    /// With --all: share the environments with other replicas through one
    /// coordination.k8s.io/v1 Lease per environment in this namespace of the management cluster
    #[arg(long, value_name = "NS")]
    pub lease_namespace: Option<String>,
    /// Kubeconfig of the management cluster holding the Leases (default: the in-cluster
    /// service account in a pod, else $KUBECONFIG or ~/.kube/config)
    #[arg(
        long,
        value_name = "FILE",
        env = "PHOENIX_LEASE_KUBECONFIG",
        requires = "lease_namespace"
    )]
    pub lease_kubeconfig: Option<PathBuf>,
    /// How long a Lease holds without renewal; a dead replica's envs move after this
    #[arg(long, default_value = "15s", value_parser = positive_duration, requires = "lease_namespace")]
    pub lease_duration: std::time::Duration,
    /// This replica's holder identity on the Leases (default: the host name and process id; in
    /// a pod, set it to the pod name)
    #[arg(long, value_name = "ID", env = "PHOENIX_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// With --all: environment checks in flight at once
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub check_concurrency: u16,
    /// Time between checks (each re-reads Git at --ref)
    #[arg(long, default_value = "1m", value_parser = positive_duration)]
    pub interval: std::time::Duration,
    /// How long drift must persist before the webhook alert (one per episode)
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub alert_after: std::time::Duration,
    /// Address for /metrics and /healthz
    #[arg(long, default_value = "127.0.0.1:9477")]
    pub listen: std::net::SocketAddr,
    /// Slack-compatible webhook URL (prefer PHOENIX_WEBHOOK_URL or --webhook-file: argv is
    /// visible to other users in `ps`)
    #[arg(
        long,
        value_name = "URL",
        env = "PHOENIX_WEBHOOK_URL",
        hide_env_values = true
    )]
    pub webhook: Option<String>,
    /// Read the webhook URL from the first line of this file
    #[arg(long, value_name = "FILE", conflicts_with = "webhook")]
    pub webhook_file: Option<PathBuf>,
    /// Re-converge drifted layers after each drifted check (recorded as `heal` runs)
    #[arg(long)]
    pub heal: bool,
}

/// `--layers` values: the four layer names, offered by shell completion.
fn layer_parser() -> impl clap::builder::TypedValueParser<Value = crate::engine::Layer> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(crate::engine::Layer::ALL.map(|l| l.as_str()))
        .try_map(|s| s.parse::<crate::engine::Layer>())
}

fn parse_selector(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("{s:?} is not LABEL=VALUE")),
    }
}

fn positive_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub env: EnvArg,
    /// Name of the copy: resources and the cluster are named ENV-NAME
    #[arg(long, value_name = "NAME")]
    pub ephemeral: String,
    /// How long the copy may live before `phoenix gc` removes it
    #[arg(long, default_value = "8h", value_parser = positive_duration)]
    pub ttl: std::time::Duration,
    /// Nodes in flight at once
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Only list what would be torn down
    #[arg(long)]
    pub dry_run: bool,
    /// Nodes in flight at once
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
}

#[derive(Debug, Args)]
pub struct DrillArgs {
    #[command(flatten)]
    pub env: EnvArg,
    #[command(flatten)]
    pub failover: FailoverArg,
    /// Leave the copy running after the drill (it still expires: see --ttl)
    #[arg(long)]
    pub keep: bool,
    /// Expiry of the copy, so `phoenix gc` removes it if the teardown cannot run
    #[arg(long, default_value = "2h", value_parser = positive_duration)]
    pub ttl: std::time::Duration,
    /// Directory for the Markdown and JSON reports (default: $PHOENIX_HOME/drills/ENV)
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<PathBuf>,
    /// Nodes in flight at once
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub env: EnvArg,
    #[command(flatten)]
    pub failover: FailoverArg,
    /// How long one snapshot or copy may take to complete (default: the env's timeouts.cloud)
    #[arg(long, value_parser = positive_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Nodes in flight at once
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
}

#[derive(Debug, Args)]
pub struct RunbookArgs {
    #[command(flatten)]
    pub env: EnvArg,
}

#[derive(Debug, Args)]
pub struct SshKeyArgs {
    #[command(flatten)]
    pub env: EnvArg,
    /// Where to write the private key: a new file (mode 0600); an existing file is never
    /// overwritten
    #[arg(long, value_name = "PATH")]
    pub out: std::path::PathBuf,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub env: EnvArg,
    #[command(flatten)]
    pub failover: FailoverArg,
    /// Do not contact any live system: show the graph and what would be created from nothing
    #[arg(long, conflicts_with = "against")]
    pub offline: bool,
    /// Compare the commit (--ref, default HEAD) with this one instead of with live state,
    /// offline: what merging the change does, per layer and node (exit 2 when it changes
    /// anything, 0 when not, 1 when the env is invalid at --ref, as --detailed-exitcode)
    #[arg(long, value_name = "REF")]
    pub against: Option<String>,
    /// With --against: also compare the live system with the commit, to show drift merging
    /// overwrites
    #[arg(long, requires = "against")]
    pub live: bool,
    /// Exit 2 when changes are pending, 0 when there is nothing to do, 1 on error
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Only these layers (comma-separated: cloud,cluster,addons,apps); the others are not
    /// compared or shown
    #[arg(long, value_delimiter = ',', value_name = "LAYERS", value_parser = layer_parser())]
    pub layers: Vec<crate::engine::Layer>,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    #[command(flatten)]
    pub env: EnvArg,
    /// Only this component (add-on or app)
    #[arg(long, value_name = "NAME")]
    pub component: Option<String>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Name of the new environment (a directory under environments/)
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The kubeconfig of the existing cluster (a path on the machine running phoenix)
    #[arg(long, default_value = "~/.kube/config", conflicts_with = "aws")]
    pub kubeconfig: String,
    /// The kubeconfig context (default: its current context)
    #[arg(long, conflicts_with = "aws")]
    pub context: Option<String>,
    /// Instead of an existing cluster: a k3s server on AWS EC2 in this region
    #[arg(long, value_name = "REGION")]
    pub aws: Option<String>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub env: EnvArg,
    /// Show at most this many runs, newest first
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// Shell to generate the script for
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write phoenix.1 and one phoenix-COMMAND.1 per subcommand into this directory (created if
    /// missing) instead of printing them
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}
