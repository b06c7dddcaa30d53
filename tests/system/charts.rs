//! Helm charts and kustomize directories as component sources (issue 18), through the real
//! `phoenix` binary, the real Helm 4 (`PHOENIX_HELM`, built by scripts/setup into
//! testenv/bin/helm), kubectl's kustomize and the real control plane: an existing cluster reached
//! through its kubeconfig, as in tests/rebuild.rs.

use testkit::{bed, control_plane};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bed::{text, Bed};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use kube::api::{Api, Patch, PatchParams};

const SECRET: &str = "chart-secret-value-7f3a9c";

/// Helm 4: `PHOENIX_HELM`, else the one scripts/setup builds.
fn helm() -> PathBuf {
    std::env::var_os("PHOENIX_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("testenv/bin/helm"))
}

/// A small chart: a Deployment, a ConfigMap from values, a Secret from a value, a test hook.
fn write_chart(dir: &Path, version: &str, greeting_default: &str) {
    let files = [
        (
            "Chart.yaml",
            format!("apiVersion: v2\nname: hello\nversion: {version}\nappVersion: \"1.0\"\n"),
        ),
        (
            "values.yaml",
            format!("replicas: 1\ngreeting: {greeting_default}\npassword: \"\"\n"),
        ),
        (
            "templates/deployment.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Release.Name }}-web\n  labels: {chart-version: \"{{ .Chart.Version }}\"}\nspec:\n  replicas: {{ .Values.replicas }}\n  selector: {matchLabels: {app: {{ .Release.Name }}}}\n  template:\n    metadata: {labels: {app: {{ .Release.Name }}}}\n    spec:\n      containers:\n        - name: web\n          image: nginx:1.27\n          env:\n            - name: PASSWORD\n              valueFrom: {secretKeyRef: {name: {{ .Release.Name }}-creds, key: password}}\n".to_string(),
        ),
        (
            "templates/configmap.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-config\ndata:\n  greeting: {{ .Values.greeting | quote }}\n  version: {{ .Chart.Version | quote }}\n".to_string(),
        ),
        (
            "templates/secret.yaml",
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {{ .Release.Name }}-creds\ntype: Opaque\ndata:\n  password: {{ .Values.password | b64enc | quote }}\n".to_string(),
        ),
        (
            "templates/tests/test-connection.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {{ .Release.Name }}-test\n  annotations: {\"helm.sh/hook\": test}\nspec:\n  containers: [{name: t, image: busybox}]\n  restartPolicy: Never\n".to_string(),
        ),
    ];
    for (rel, content) in files {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
}

/// `helm package` of the chart at `dir` into `out_dir`; the file's path.
fn package(dir: &Path, out_dir: &Path) -> PathBuf {
    std::fs::create_dir_all(out_dir).unwrap();
    let out = Command::new(helm())
        .arg("package")
        .arg(dir)
        .arg("--destination")
        .arg(out_dir)
        .env("HELM_CACHE_HOME", out_dir.join(".cache"))
        .env("HELM_CONFIG_HOME", out_dir.join(".config"))
        .env("HELM_DATA_HOME", out_dir.join(".data"))
        .output()
        .expect("run helm package");
    assert!(out.status.success(), "{}", text(&out));
    let _ = std::fs::remove_dir_all(out_dir.join(".cache"));
    let _ = std::fs::remove_dir_all(out_dir.join(".config"));
    let _ = std::fs::remove_dir_all(out_dir.join(".data"));
    let name = String::from_utf8_lossy(&out.stdout)
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    PathBuf::from(name)
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    let sum = sha2::Sha256::digest(std::fs::read(path).unwrap());
    format!(
        "sha256:{}",
        sum.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

struct Env<'a> {
    bed: &'a Bed,
    repo: testkit::git::Repo<'a>,
    kubeconfig: PathBuf,
    tmp: PathBuf,
}

impl<'a> Env<'a> {
    /// The env `charts`: an existing cluster (the control plane's cluster `charts`, one Ready
    /// node), no add-ons yet.
    fn new(bed: &'a Bed) -> Env<'a> {
        let repo = bed.git.repo("charts");
        let kubeconfig = bed.git.path("charts.kubeconfig");
        std::fs::write(&kubeconfig, bed.kube.kubeconfig(Some("charts"))).unwrap();
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": { "name": "charts-0" },
            "status": { "conditions": [{ "type": "Ready", "status": "True" }] }
        }))
        .unwrap();
        let nodes: Api<Node> = Api::all(bed.client("charts"));
        bed.rt
            .block_on(nodes.create(&Default::default(), &node))
            .expect("create a node");
        assert!(bed.kube.set_node_ready("charts", "charts-0", true));
        let tmp = bed.git.path("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        Env {
            bed,
            repo,
            kubeconfig,
            tmp,
        }
    }

    /// Writes the environment with these add-on entries (YAML list items) and commits.
    fn define(&self, addons: &str, msg: &str) {
        self.repo.write(
            "environments/charts/environment.yaml",
            format!(
                "apiVersion: phoenix/v1\nkind: Environment\nmetadata: {{ name: charts }}\nspec:\n  values: {{ greeting: hello-from-env }}\n  secrets: [{{ name: db, from: env:PHOENIX_CHARTS_DB }}]\n  timeouts: {{ cluster: 20s }}\n  cluster:\n    existing: {{ kubeconfig: {} }}\n  addons:\n{addons}",
                self.kubeconfig.display()
            ),
        );
        self.repo.commit(msg);
    }

    fn phoenix(&self, args: &[&str]) -> Output {
        let mut cmd = self.bed.command(&self.repo.dir);
        cmd.env_remove("PHOENIX_CLUSTER_ENDPOINT")
            .env("PHOENIX_HELM", helm())
            .env("PHOENIX_CHARTS_DB", SECRET)
            .env("TMPDIR", &self.tmp);
        cmd.args(args).output().expect("run phoenix")
    }

    fn configmap(&self, name: &str) -> Option<ConfigMap> {
        let api: Api<ConfigMap> = Api::namespaced(self.bed.client("charts"), "default");
        self.bed
            .rt
            .block_on(api.get_opt(name))
            .expect("get configmap")
    }

    /// The private render directories are gone once phoenix exits.
    fn assert_tmp_clean(&self) {
        let left: Vec<_> = std::fs::read_dir(&self.tmp)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "phoenix left {left:?} in its TMPDIR");
    }
}

/// Every file under `dir` (recursively) that contains `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_containing(&p, needle));
        } else if std::fs::read(&p)
            .map(|b| String::from_utf8_lossy(&b).contains(needle))
            .unwrap_or(false)
        {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_chart_directory_and_a_packaged_chart_converge_with_values_and_a_secret() {
    let bed = Bed::new();
    let env = Env::new(&bed);
    write_chart(
        &env.repo.dir.join("environments/charts/charts/hello"),
        "0.1.0",
        "chart-default",
    );
    let packaged = package(
        &env.repo.dir.join("environments/charts/charts/hello"),
        &env.repo.dir.join("environments/charts/packages"),
    );
    assert!(packaged.ends_with("hello-0.1.0.tgz"), "{packaged:?}");
    // The directory chart (not the packaged one) also brings a CRD (crds/, applied first) and an
    // object of it.
    let dir = env.repo.dir.join("environments/charts/charts/hello");
    std::fs::create_dir_all(dir.join("crds")).unwrap();
    std::fs::write(
        dir.join("crds/greeting.yaml"),
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: greetings.charts.test.dev}\nspec:\n  group: charts.test.dev\n  scope: Namespaced\n  names: {kind: Greeting, plural: greetings, singular: greeting}\n  versions:\n    - name: v1\n      served: true\n      storage: true\n      schema:\n        openAPIV3Schema:\n          type: object\n          properties:\n            spec: {type: object, properties: {text: {type: string}}}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("templates/greeting.yaml"),
        "apiVersion: charts.test.dev/v1\nkind: Greeting\nmetadata: {name: {{ .Release.Name }}}\nspec: {text: {{ .Values.greeting | quote }}}\n",
    )
    .unwrap();
    env.define(
        "    - name: hello\n      chart: { path: charts/hello }\n      values: { greeting: \"{{ values.greeting }}\", password: \"{{ secrets.db }}\", replicas: 2 }\n      wait: 1m\n    - name: packaged\n      chart: { path: packages/hello-0.1.0.tgz, releaseName: boxed }\n      wait: 1m\n",
        "two charts",
    );

    let out = env.phoenix(&["validate", "charts"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    env.assert_tmp_clean();

    // render shows the chart's objects with the secret redacted, the test hook skipped.
    let out = env.phoenix(&["render", "charts"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert!(
        shown.contains("name: hello-config") && shown.contains("hello-from-env"),
        "{shown}"
    );
    assert!(shown.contains("name: boxed-web"), "{shown}");
    assert!(
        !shown.contains("hello-test") && !shown.contains("boxed-test"),
        "test hooks are skipped: {shown}"
    );
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(
        shown.contains("password: \"**redacted**(db)\""),
        "the chart's Secret shows the marker: {shown}"
    );

    let started = std::time::Instant::now();
    let out = env.phoenix(&["rebuild", "charts"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    eprintln!("rebuild of two charts: {:?}", started.elapsed());
    assert!(!all.contains(SECRET), "{all}");
    env.assert_tmp_clean();

    // Values from the env and the chart reach the objects; both charts are healthy.
    let cm = env
        .configmap("hello-config")
        .expect("the directory chart's ConfigMap");
    let data = cm.data.unwrap();
    assert_eq!(data["greeting"], "hello-from-env");
    let boxed = env
        .configmap("boxed-config")
        .expect("the packaged chart's ConfigMap");
    assert_eq!(boxed.data.unwrap()["greeting"], "chart-default");
    let (ok, greeting, err) = control_plane::kubectl(
        &bed.kube.cluster_url("charts"),
        &[
            "get",
            "greetings",
            "hello",
            "-n",
            "default",
            "-o",
            "jsonpath={.spec.text}",
        ],
    );
    assert!(ok, "the chart's CRD and its object: {err}");
    assert_eq!(greeting, "hello-from-env");
    let labels = cm.metadata.labels.unwrap_or_default();
    assert!(
        labels.keys().any(|k| k.starts_with("phoenix")),
        "chart objects carry phoenix's ownership labels: {labels:?}"
    );
    let deps: Api<Deployment> = Api::namespaced(bed.client("charts"), "default");
    let web = bed.rt.block_on(deps.get("hello-web")).unwrap();
    assert_eq!(web.spec.unwrap().replicas, Some(2));
    let status = web.status.unwrap_or_default();
    assert_eq!(status.ready_replicas, Some(2), "healthy: {status:?}");
    let boxed_web = bed.rt.block_on(deps.get("boxed-web")).unwrap();
    assert_eq!(boxed_web.status.unwrap_or_default().ready_replicas, Some(1));
    // The secret reaches the Secret's data, and nothing else.
    let secrets: Api<Secret> = Api::namespaced(bed.client("charts"), "default");
    let creds = bed.rt.block_on(secrets.get("hello-creds")).unwrap();
    assert_eq!(creds.data.unwrap()["password"].0, SECRET.as_bytes());
    for (what, dir) in [
        ("PHOENIX_HOME", bed.git.phoenix_home()),
        ("the repository", env.repo.dir.clone()),
        ("TMPDIR", env.tmp.clone()),
    ] {
        let found = files_containing(&dir, SECRET);
        assert!(found.is_empty(), "the secret is in {what}: {found:?}");
    }

    // In sync; then drift on a chart-rendered object is caught by diff.
    let out = env.phoenix(&["diff", "charts"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let cms: Api<ConfigMap> = Api::namespaced(bed.client("charts"), "default");
    bed.rt
        .block_on(cms.patch(
            "hello-config",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "data": { "greeting": "edited-by-hand" } })),
        ))
        .unwrap();
    let out = env.phoenix(&["diff", "charts"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("hello-config"), "{all}");
    assert!(!all.contains(SECRET), "{all}");

    // Removing a chart from Git prunes its objects.
    env.define(
        "    - name: hello\n      chart: { path: charts/hello }\n      values: { greeting: \"{{ values.greeting }}\", password: \"{{ secrets.db }}\", replicas: 2 }\n      wait: 1m\n",
        "the packaged chart leaves",
    );
    let out = env.phoenix(&["rebuild", "charts"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(env.configmap("boxed-config").is_none(), "pruned");
    assert!(
        bed.rt
            .block_on(deps.get_opt("boxed-web"))
            .unwrap()
            .is_none(),
        "pruned"
    );
    assert_eq!(
        env.configmap("hello-config").unwrap().data.unwrap()["greeting"],
        "hello-from-env",
        "the drift was converged back"
    );
}

#[test]
fn a_secret_outside_a_secrets_data_and_a_delete_hook_are_refused() {
    let bed = Bed::new();
    let env = Env::new(&bed);
    write_chart(
        &env.repo.dir.join("environments/charts/charts/hello"),
        "0.1.0",
        "x",
    );
    // The secret as the ConfigMap's greeting: by name, and reached indirectly.
    for (i, expr) in ["{{ secrets.db }}", "{{ (secrets | dictsort | first)[1] }}"]
        .iter()
        .enumerate()
    {
        env.define(
            &format!("    - name: hello\n      chart: {{ path: charts/hello }}\n      values: {{ greeting: \"{expr}\" }}\n"),
            &format!("a secret into a ConfigMap ({i})"),
        );
        for args in [&["validate", "charts"][..], &["rebuild", "charts"][..]] {
            let out = env.phoenix(args);
            let all = text(&out);
            assert_eq!(out.status.code(), Some(1), "{expr} {args:?}: {all}");
            assert!(
                all.contains("secret \"db\"")
                    && all.contains("ConfigMap hello-config")
                    && all.contains("outside a Secret's data"),
                "{expr} {args:?}: {all}"
            );
            assert!(!all.contains(SECRET), "{all}");
        }
    }
    assert!(env.configmap("hello-config").is_none(), "nothing applied");

    // A pre-delete hook is refused, naming it (phoenix has no delete step to run it in).
    env.repo.write(
        "environments/charts/charts/hello/templates/job.yaml",
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: cleanup\n  annotations: {\"helm.sh/hook\": pre-delete, \"helm.sh/hook-weight\": \"1\"}\nspec:\n  template:\n    spec: {restartPolicy: Never, containers: [{name: m, image: busybox}]}\n",
    );
    env.define(
        "    - name: hello\n      chart: { path: charts/hello }\n",
        "a delete hook",
    );
    for args in [&["validate", "charts"][..], &["rebuild", "charts"][..]] {
        let out = env.phoenix(args);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {all}");
        assert!(
            all.contains("Job cleanup is a Helm hook (pre-delete): refused")
                && all.contains("templates/job.yaml"),
            "{args:?}: {all}"
        );
    }
    assert!(env.configmap("hello-config").is_none(), "nothing applied");
}

/// A hook Job of the chart, with its hook annotations.
fn hook_job(name: &str, hook: &str, weight: Option<i64>) -> String {
    let weight = weight.map_or(String::new(), |w| {
        format!(", \"helm.sh/hook-weight\": \"{w}\"")
    });
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\n  annotations: {{\"helm.sh/hook\": \"{hook}\"{weight}, \"helm.sh/hook-delete-policy\": before-hook-creation}}\nspec:\n  backoffLimit: 0\n  template:\n    spec: {{restartPolicy: Never, containers: [{{name: m, image: busybox}}]}}\n"
    )
}

#[test]
fn install_hooks_run_before_and_after_the_charts_objects_in_weight_order() {
    use k8s_openapi::api::batch::v1::Job;
    let bed = Bed::new();
    let env = Env::new(&bed);
    let chart = env.repo.dir.join("environments/charts/charts/hello");
    write_chart(&chart, "0.1.0", "x");
    // Available 2 seconds after its Pod is Ready: a post hook applied without waiting for it would
    // be created seconds before it was Available, which the server's timestamps show.
    let deployment = chart.join("templates/deployment.yaml");
    let template = std::fs::read_to_string(&deployment).unwrap();
    let template = template.replacen(
        "spec:\n  replicas:",
        "spec:\n  minReadySeconds: 2\n  replicas:",
        1,
    );
    assert!(template.contains("minReadySeconds"), "{template}");
    std::fs::write(&deployment, template).unwrap();
    let hooks = [
        hook_job("migrate", "pre-install,pre-upgrade", Some(-5)),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: pre-config\n  annotations: {\"helm.sh/hook\": pre-install, \"helm.sh/hook-weight\": \"0\"}\ndata: {a: b}\n".to_string(),
        hook_job("notify", "post-install", None),
    ]
    .join("---\n");
    std::fs::write(chart.join("templates/hooks.yaml"), hooks).unwrap();
    env.define(
        "    - name: hello\n      chart: { path: charts/hello }\n      wait: 2m\n",
        "a chart with install hooks",
    );
    let out = env.phoenix(&["rebuild", "charts", "--output", "json"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");

    // The engine's account: each stage applied, then healthy, before the next is applied.
    let progress: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["type"] == "nodeProgress")
        .filter_map(|e| e["message"].as_str().map(str::to_string))
        .collect();
    let at = |message: &str| {
        progress
            .iter()
            .position(|m| m == message)
            .unwrap_or_else(|| panic!("no progress {message:?} in {progress:#?}"))
    };
    let order = [
        at("applying pre-install/pre-upgrade hooks of weight -5"),
        at("pre-install/pre-upgrade hooks of weight -5 healthy"),
        at("applying pre-install/pre-upgrade hooks of weight 0"),
        at("pre-install/pre-upgrade hooks of weight 0 healthy"),
        at("applying the chart's objects"),
        at("the chart's objects healthy"),
        at("applying post-install/post-upgrade hooks of weight 0"),
    ];
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "{order:?}: {progress:#?}"
    );

    // The server's account (to the second): the pre hook Job finished before the next stage's
    // ConfigMap and the chart's Deployment were created; the post hook Job was created once the
    // Deployment was Available, and is Complete.
    let client = bed.client("charts");
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(client, "default");
    let job = |name: &str| bed.rt.block_on(jobs.get(name)).expect("get job");
    let migrate = job("migrate");
    let notify = job("notify");
    let web = bed.rt.block_on(deployments.get("hello-web")).unwrap();
    let pre_config = env
        .configmap("pre-config")
        .expect("the pre-install ConfigMap");
    let migrated = migrate
        .status
        .as_ref()
        .and_then(|s| s.completion_time.clone());
    let migrated = migrated.expect("migrate completed").0;
    let created = |m: &kube::api::ObjectMeta| m.creation_timestamp.clone().unwrap().0;
    assert!(
        migrated <= created(&pre_config.metadata),
        "{migrated:?} {pre_config:?}"
    );
    assert!(created(&pre_config.metadata) <= created(&web.metadata));
    let available = web
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| {
            c.iter()
                .find(|c| c.type_ == "Available" && c.status == "True")
        })
        .and_then(|c| c.last_transition_time.clone())
        .expect("hello-web Available")
        .0;
    assert!(
        available <= created(&notify.metadata),
        "{available:?} {notify:?}"
    );
    assert!(
        notify
            .status
            .as_ref()
            .and_then(|s| s.completion_time.as_ref())
            .is_some(),
        "{notify:?}"
    );

    // Converged again from the same commit: the hooks are unchanged objects, not run again.
    let out = env.phoenix(&["rebuild", "charts"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(job("migrate").metadata.uid, migrate.metadata.uid);
    assert_eq!(job("notify").metadata.uid, notify.metadata.uid);
}

#[test]
fn a_vendored_repository_chart_is_digest_checked_and_upgrades() {
    let bed = Bed::new();
    let env = Env::new(&bed);
    let src = env.tmp.parent().unwrap().join("chart-src");
    write_chart(&src, "1.0.0", "v1");
    let v1 = package(&src, &env.repo.dir.join("vendor/charts"));
    assert!(v1.ends_with("vendor/charts/hello-1.0.0.tgz"), "{v1:?}");
    let digest = sha256(&v1);
    let entry = |version: &str, digest: &str| {
        format!("    - name: hello\n      chart: {{ repo: \"https://charts.example.invalid/stable\", name: hello, version: \"{version}\", digest: \"{digest}\" }}\n      wait: 1m\n")
    };

    // A wrong digest is refused, naming both.
    let wrong = format!("sha256:{}", "0".repeat(64));
    env.define(&entry("1.0.0", &wrong), "a wrong digest");
    let out = env.phoenix(&["rebuild", "charts"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains(&digest) && all.contains(&wrong), "{all}");
    assert!(env.configmap("hello-config").is_none());

    // Not vendored: the error says to run vendor.
    env.define(&entry("9.9.9", &digest), "a version not vendored");
    let out = env.phoenix(&["validate", "charts"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("phoenix vendor charts"), "{all}");

    // The right digest renders from the commit alone (the repository URL does not resolve).
    env.define(&entry("1.0.0", &digest), "hello 1.0.0");
    let out = env.phoenix(&["rebuild", "charts"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        env.configmap("hello-config").unwrap().data.unwrap()["version"],
        "1.0.0"
    );

    // An upgrade: 1.1.0 vendored beside it, the env moved to it, converged.
    write_chart(&src, "1.1.0", "v2");
    let v2 = package(&src, &env.repo.dir.join("vendor/charts"));
    env.define(&entry("1.1.0", &sha256(&v2)), "hello 1.1.0");
    // plan shows the upgrade from the commit alone.
    let out = env.phoenix(&["plan", "charts", "--detailed-exitcode"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("hello-config"), "{all}");
    let out = env.phoenix(&["rebuild", "charts"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let data = env.configmap("hello-config").unwrap().data.unwrap();
    assert_eq!(
        (data["version"].as_str(), data["greeting"].as_str()),
        ("1.1.0", "v2")
    );
    let out = env.phoenix(&["diff", "charts"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn a_kustomize_overlay_converges_and_remote_bases_are_refused() {
    let bed = Bed::new();
    let env = Env::new(&bed);
    env.repo.write(
        "environments/charts/kustomize/base/kustomization.yaml",
        "resources: [configmap.yaml]\n",
    );
    env.repo.write(
        "environments/charts/kustomize/base/configmap.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {level: base, keep: yes-kept}\n",
    );
    env.repo.write(
        "environments/charts/kustomize/prod/kustomization.yaml",
        "resources: [../base]\nnamePrefix: prod-\npatches:\n  - patch: |-\n      apiVersion: v1\n      kind: ConfigMap\n      metadata: {name: settings}\n      data: {level: prod}\n",
    );
    env.define(
        "    - name: settings\n      kustomize: kustomize/prod\n",
        "a kustomize overlay",
    );
    let out = env.phoenix(&["rebuild", "charts"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let data = env
        .configmap("prod-settings")
        .expect("the overlay's ConfigMap")
        .data
        .unwrap();
    assert_eq!(
        (data["level"].as_str(), data["keep"].as_str()),
        ("prod", "yes-kept")
    );
    env.assert_tmp_clean();

    env.repo.write(
        "environments/charts/kustomize/prod/kustomization.yaml",
        "resources: [\"https://github.com/example/config//base?ref=v1\"]\n",
    );
    env.repo.commit("a remote base");
    let out = env.phoenix(&["validate", "charts"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("remote base") && all.contains("refused"),
        "{all}"
    );
}

/// A chart repository on 127.0.0.1 serving the files of `dir` (index.yaml, packaged charts) until
/// dropped; every request is counted.
struct ChartRepo {
    url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ChartRepo {
    fn serve(dir: PathBuf) -> ChartRepo {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/stable", listener.local_addr().unwrap());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop2, requests2) = (stop.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                requests2.lock().unwrap().push(path.clone());
                let file = path.strip_prefix("/stable/").map(|p| dir.join(p));
                let (status, body) = match file.and_then(|f| std::fs::read(f).ok()) {
                    Some(b) => ("200 OK", b),
                    None => ("404 Not Found", b"not found".to_vec()),
                };
                let _ = conn.write_all(
                    format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .as_bytes(),
                );
                let _ = conn.write_all(&body);
            }
        });
        ChartRepo {
            url,
            stop,
            requests,
            thread: Some(thread),
        }
    }
}

impl Drop for ChartRepo {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `helm repo index` of `dir` for `url`.
fn index(dir: &Path, url: &str) {
    let out = Command::new(helm())
        .arg("repo")
        .arg("index")
        .arg(dir)
        .args(["--url", url])
        .env("HELM_CACHE_HOME", dir.join("../.cache"))
        .env("HELM_CONFIG_HOME", dir.join("../.config"))
        .env("HELM_DATA_HOME", dir.join("../.data"))
        .output()
        .expect("run helm repo index");
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_chart_repository_is_vendored_then_rebuilt_with_the_server_stopped() {
    let bed = Bed::new();
    let env = Env::new(&bed);
    let work = env.tmp.parent().unwrap().to_path_buf();
    let served = work.join("served");
    write_chart(&work.join("src"), "1.0.0", "from-the-repository");
    let v1 = package(&work.join("src"), &served);
    let digest = sha256(&v1);
    let server = ChartRepo::serve(served.clone());
    index(&served, &server.url);
    let entry = |version: &str, digest: &str| {
        format!("    - name: hello\n      chart: {{ repo: \"{}\", name: hello, version: \"{version}\", digest: \"{digest}\" }}\n      wait: 1m\n", server.url)
    };

    // Not vendored yet: validate and rebuild say to run vendor; nothing is fetched by them.
    env.define(&entry("1.0.0", &digest), "a repository chart");
    for args in [&["validate", "charts"][..], &["rebuild", "charts"][..]] {
        let out = env.phoenix(args);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {all}");
        assert!(all.contains("phoenix vendor charts"), "{args:?}: {all}");
    }
    assert!(
        server.requests.lock().unwrap().is_empty(),
        "only vendor reaches the repository"
    );

    // A digest other than the served chart's is refused by vendor, and nothing is written.
    let wrong = format!("sha256:{}", "1".repeat(64));
    env.define(&entry("1.0.0", &wrong), "a wrong digest");
    let out = env.phoenix(&["vendor", "charts"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains(&digest) && all.contains(&wrong), "{all}");
    assert!(!env.repo.dir.join("vendor/charts/hello-1.0.0.tgz").exists());

    // No digest declared: validate says to vendor; vendor fetches (index.yaml, then the chart,
    // checked against the index's digest) and prints the digest to declare.
    let undeclared = entry("1.0.0", "").replace(", digest: \"\"", "");
    env.define(&undeclared, "no digest yet");
    let out = env.phoenix(&["validate", "charts"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("has no digest") && all.contains("phoenix vendor charts"),
        "{all}"
    );
    let out = env.phoenix(&["vendor", "charts"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains(&format!("add `digest: {digest}`")), "{all}");
    assert!(
        all.contains("git add vendor/charts/hello-1.0.0.tgz"),
        "{all}"
    );
    let requests = server.requests.lock().unwrap().clone();
    assert_eq!(
        requests,
        [
            "/stable/index.yaml",
            "/stable/hello-1.0.0.tgz",
            "/stable/index.yaml",
            "/stable/hello-1.0.0.tgz"
        ],
        "the refused run fetched too"
    );
    assert_eq!(
        sha256(&env.repo.dir.join("vendor/charts/hello-1.0.0.tgz")),
        digest
    );
    // Declared and committed.
    env.define(&entry("1.0.0", &digest), "vendor hello 1.0.0");
    // A second run finds it in place.
    let out = env.phoenix(&["vendor", "charts"]);
    assert!(text(&out).contains("unchanged"), "{}", text(&out));

    // The server stops; the rebuild needs only Git.
    drop(server);
    let out = env.phoenix(&["rebuild", "charts"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let data = env.configmap("hello-config").unwrap().data.unwrap();
    assert_eq!(
        (data["version"].as_str(), data["greeting"].as_str()),
        ("1.0.0", "from-the-repository")
    );

    // An upgrade: 1.1.0 published, vendored, committed, converged.
    write_chart(&work.join("src"), "1.1.0", "upgraded");
    let v2 = package(&work.join("src"), &served);
    let server = ChartRepo::serve(served.clone());
    index(&served, &server.url);
    let entry2 = format!("    - name: hello\n      chart: {{ repo: \"{}\", name: hello, version: \"1.1.0\", digest: \"{}\" }}\n      wait: 1m\n", server.url, sha256(&v2));
    env.define(&entry2, "hello 1.1.0");
    let out = env.phoenix(&["vendor", "charts"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    env.repo.commit("vendor hello 1.1.0");
    drop(server);
    let out = env.phoenix(&["rebuild", "charts"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let data = env.configmap("hello-config").unwrap().data.unwrap();
    assert_eq!(
        (data["version"].as_str(), data["greeting"].as_str()),
        ("1.1.0", "upgraded")
    );
}

#[test]
fn validate_names_the_missing_tool() {
    let bed = Bed::new();
    let env = Env::new(&bed);
    write_chart(
        &env.repo.dir.join("environments/charts/charts/hello"),
        "0.1.0",
        "x",
    );
    env.define(
        "    - name: hello\n      chart: { path: charts/hello }\n",
        "a chart",
    );
    let mut cmd = bed.command(&env.repo.dir);
    cmd.env("PHOENIX_HELM", env.tmp.join("no-helm-here"))
        .env("PHOENIX_CHARTS_DB", SECRET)
        .args(["validate", "charts"]);
    let out = cmd.output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("helm is not installed") && all.contains("PHOENIX_HELM"),
        "{all}"
    );
}
