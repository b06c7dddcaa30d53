//! The k3s cloud-init templates rendered for a sample environment with real credentials, checked
//! with `cloud-init schema` and `shellcheck` (every embedded script); and the derived credentials:
//! the same bytes from the same secret on any machine, certificates openssl accepts, a separate
//! agent token, and no secret in Debug or serialized output.
//!
//! A missing `cloud-init` or `shellcheck` fails the test, naming it (scripts/setup installs both).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use phoenix::env::model::{Cluster, Environment, Role};
use phoenix::env::{load, MemFiles};
use phoenix::providers::cluster::{
    agent_context, display_context, kubeconfig_value, server_context, with_disabled,
    write_kubeconfig, Credentials, Secret,
};
use phoenix::render::{Mode, Renderer, SecretValues};
use testkit::tools;

const ENV_YAML: &str = "apiVersion: phoenix/v1
kind: Environment
metadata: { name: demo }
spec:
  cloud:
    provider: aws
    region: us-east-1
    network: { cidr: 10.40.0.0/16, subnets: [{ name: public-a, cidr: 10.40.1.0/24, zone: us-east-1a, public: true }] }
    securityGroups: [{ name: cluster, ingress: [{ port: 6443, from: 0.0.0.0/0 }] }]
    instances:
      - { name: server, role: server, count: 1, type: t3.medium, image: { owner: amazon, name: \"al2023-ami-2023*-x86_64\" }, subnet: public-a, securityGroups: [cluster] }
      - { name: agent, role: agent, count: 2, type: t3.medium, image: { owner: amazon, name: \"al2023-ami-2023*-x86_64\" }, subnet: public-a, securityGroups: [cluster] }
  cluster: { distribution: k3s, version: v1.31.4+k3s1, secret: env:PHOENIX_TEST_CLUSTER_SECRET, tlsSans: [api.demo.example], disable: [traefik, servicelb] }
  volumes: [{ name: db, size: 20, instance: server/0, mountPath: /var/lib/db, filesystem: xfs }]
";

/// A cluster secret for the tests (never a real one).
const CLUSTER_SECRET: &str = "userdata-test-cluster-secret-0123456789abcdef";

fn derive(home: &Path, env: &str) -> Credentials {
    Credentials::derive(home, env, &Secret::new(CLUSTER_SECRET)).expect("credentials derive")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The sample environment plus every template under templates/cloud-init, as a commit.
fn files() -> MemFiles {
    let mut files = MemFiles::default().with("environments/demo/environment.yaml", ENV_YAML);
    let dir = repo().join("templates/cloud-init");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("templates/cloud-init exists")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .into_string()
                .expect("utf-8 name")
        })
        .collect();
    names.sort();
    for name in names {
        let text = std::fs::read_to_string(dir.join(&name)).expect("template readable");
        files = files.with(&format!("templates/cloud-init/{name}"), &text);
    }
    files
}

fn sample() -> (MemFiles, Environment) {
    let files = files();
    let env = load(&files, "demo").unwrap_or_else(|d| panic!("sample env loads: {d:?}"));
    (files, env)
}

fn version(env: &Environment) -> String {
    match &env.cluster {
        Some(Cluster::K3s(k)) => k.version.clone(),
        other => panic!("sample env is k3s, got {other:?}"),
    }
}

/// Renders the user-data of every instance with real credentials: (instance, role, text).
fn render_all(creds: &Credentials) -> Vec<(String, Role, String)> {
    let (files, env) = sample();
    let renderer = Renderer::new(
        &files,
        &env,
        "demo",
        SecretValues::redacted(&env),
        Mode::Apply,
    )
    .expect("renderer");
    let cloud = env.cloud.as_ref().expect("cloud");
    let v = version(&env);
    let mut out = Vec::new();
    for g in &cloud.instances {
        let template = phoenix::env::validate::default_user_data(&g.role).expect("k3s role");
        for i in 0..g.count {
            let ctx = match g.role {
                Role::Server => {
                    let sans = match &env.cluster {
                        Some(Cluster::K3s(k)) => k.tls_sans.clone(),
                        _ => Vec::new(),
                    };
                    let disable = match &env.cluster {
                        Some(Cluster::K3s(k)) => k.disable.clone(),
                        _ => Vec::new(),
                    };
                    with_disabled(
                        server_context(creds, &v, &sans).expect("server ctx"),
                        &disable,
                    )
                }
                Role::Agent => agent_context(creds, &v, "10.40.1.12").expect("agent ctx"),
                Role::None => unreachable!("no plain instances in the sample"),
            };
            let text = renderer
                .user_data(&files, template, g, i, &ctx)
                .unwrap_or_else(|e| panic!("rendering {template}: {e:?}"));
            out.push((format!("{}-{i}", g.name), g.role.clone(), text));
        }
    }
    out
}

fn yaml(text: &str) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(text)
        .unwrap_or_else(|e| panic!("rendered user-data is YAML: {e}\n{text}"))
}

/// Every script the user-data carries: write_files entries starting with `#!` (decoded when
/// base64) and runcmd/bootcmd entries given as shell strings.
fn scripts(doc: &serde_yaml_ng::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(files) = doc.get("write_files").and_then(|f| f.as_sequence()) {
        for f in files {
            let path = f
                .get("path")
                .and_then(|p| p.as_str())
                .unwrap_or("?")
                .to_string();
            let raw = f.get("content").and_then(|c| c.as_str()).unwrap_or("");
            let content = match f.get("encoding").and_then(|e| e.as_str()) {
                Some("b64") | Some("base64") => String::from_utf8(
                    base64::engine::general_purpose::STANDARD
                        .decode(raw.trim())
                        .expect("b64 content decodes"),
                )
                .expect("utf-8 content"),
                _ => raw.to_string(),
            };
            if content.starts_with("#!") {
                out.push((path, content));
            }
        }
    }
    for key in ["runcmd", "bootcmd"] {
        if let Some(cmds) = doc.get(key).and_then(|c| c.as_sequence()) {
            for (i, c) in cmds.iter().enumerate() {
                if let Some(s) = c.as_str() {
                    out.push((format!("{key}[{i}]"), format!("#!/bin/sh\n{s}\n")));
                }
            }
        }
    }
    out
}

#[test]
fn rendered_user_data_passes_cloud_init_schema_and_shellcheck() {
    let home = tempfile::tempdir().unwrap();
    let creds = derive(home.path(), "demo");
    let rendered = render_all(&creds);
    assert_eq!(rendered.len(), 3, "one server, two agents");
    let dir = tempfile::tempdir().unwrap();
    let cloud_init = tools::require("cloud-init");
    let shellcheck = tools::require("shellcheck");
    let mut script_count = 0;
    for (name, role, text) in &rendered {
        assert!(
            text.starts_with("#cloud-config\n"),
            "{name}: starts with #cloud-config"
        );
        assert!(
            text.len() < 16 * 1024,
            "{name}: EC2 limits user-data to 16 KiB, got {}",
            text.len()
        );
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, text).unwrap();
        let out = Command::new(&cloud_init)
            .args(["schema", "--config-file"])
            .arg(&file)
            .output()
            .expect("cloud-init runs");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "cloud-init schema rejects {name}:\n{all}\n---\n{text}"
        );
        assert!(
            !all.to_lowercase().contains("deprecat") && !all.to_lowercase().contains("warning"),
            "cloud-init schema reports a problem for {name}:\n{all}"
        );
        assert!(all.contains("Valid cloud-config"), "{name}: {all}");
        let doc = yaml(text);
        let found = scripts(&doc);
        assert!(!found.is_empty(), "{name}: carries the install script");
        for (path, script) in found {
            script_count += 1;
            let sfile = dir.path().join(format!("{name}-{}.sh", script_count));
            std::fs::write(&sfile, &script).unwrap();
            let out = Command::new(&shellcheck)
                .args(["--severity=style", "--shell=sh"])
                .arg(&sfile)
                .output()
                .expect("shellcheck runs");
            assert!(
                out.status.success(),
                "shellcheck reports problems in {path} of {name}:\n{}\n---\n{script}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        // What each role carries, and what it must not.
        let write_files: Vec<String> = doc["write_files"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|f| f["path"].as_str().unwrap().to_string())
            .collect();
        // The data volume of server/0 is mounted there (and k3s starts after it), nowhere else.
        let mounts = write_files
            .iter()
            .any(|p| p == "/usr/local/lib/phoenix/mount-volumes.sh");
        assert_eq!(mounts, *role == Role::Server, "{name}: mount-volumes.sh");
        if mounts {
            assert!(
                text.contains(r#"mount_volume "/dev/sdf" "/var/lib/db" "xfs" "db""#),
                "{name}: mounts volume db"
            );
            assert!(
                text.contains(
                    "mount-volumes.sh && exec /usr/local/lib/phoenix/k3s-install.sh server"
                ),
                "{name}: k3s starts only after the mount"
            );
        }
        match role {
            Role::Server => {
                for f in [
                    "server-ca.crt",
                    "server-ca.key",
                    "client-ca.crt",
                    "client-ca.key",
                ] {
                    assert!(
                        write_files
                            .iter()
                            .any(|p| p == &format!("/var/lib/rancher/k3s/server/tls/{f}")),
                        "{name}: writes {f}"
                    );
                }
                assert!(
                    text.contains(creds.server_token().expose()),
                    "{name}: server token"
                );
                assert!(
                    text.contains("\"api.demo.example\""),
                    "{name}: extra tls-san"
                );
                assert!(
                    text.contains(&format!(
                        "agent-token: \"{}\"",
                        creds.agent_secret().expose()
                    )),
                    "{name}: the server accepts agents with the agent token"
                );
                // The env brings its own ingress: k3s's Traefik and ServiceLB are disabled.
                let config = yaml(
                    doc["write_files"]
                        .as_sequence()
                        .and_then(|files| {
                            files.iter().find(|f| {
                                f.get("path").and_then(|p| p.as_str())
                                    == Some("/etc/rancher/k3s/config.yaml")
                            })
                        })
                        .and_then(|f| f.get("content"))
                        .and_then(|c| c.as_str())
                        .expect("config.yaml"),
                );
                assert_eq!(
                    config["disable"],
                    yaml("[traefik, servicelb]"),
                    "{name}: {config:?}"
                );
                let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
                assert!(
                    text.contains(&b64(creds.server_ca_cert())),
                    "{name}: server CA byte-exact"
                );
                assert!(
                    !text.contains(creds.admin_key().expose()),
                    "{name}: no admin key"
                );
                assert!(
                    !text.contains(&b64(creds.admin_key().expose())),
                    "{name}: no admin key"
                );
            }
            Role::Agent => {
                assert!(
                    text.contains("server: \"https://10.40.1.12:6443\""),
                    "{name}: joins the server\n{text}"
                );
                assert!(
                    text.contains(&format!("token: \"{}\"", creds.agent_token().expose())),
                    "{name}: the agent token, pinning the server CA\n{text}"
                );
                assert!(
                    !text.contains(creds.server_token().expose()),
                    "{name}: an agent never gets the server token"
                );
                assert!(
                    !write_files.iter().any(|p| p.contains("/tls/")),
                    "{name}: no CA files"
                );
                for secret in [
                    creds.server_ca_key(),
                    creds.client_ca_key(),
                    creds.admin_key(),
                ] {
                    let b64 = base64::engine::general_purpose::STANDARD.encode(secret.expose());
                    assert!(
                        !text.contains(&b64) && !text.contains(secret.expose()),
                        "{name}: no key material"
                    );
                }
            }
            Role::None => {}
        }
        assert!(text.contains("v1.31.4+k3s1"), "{name}: pinned version");
    }
    assert!(script_count >= 3, "every instance's script was checked");
}

/// The checks above must be able to fail: a deliberately broken document and script are
/// reported by both tools.
#[test]
fn the_linters_catch_broken_user_data() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "#cloud-config\nwrite_files:\n  - path: /x\n    permissions: 600\n    encodin: b64\n",
    )
    .unwrap();
    let out = Command::new(tools::require("cloud-init"))
        .args(["schema", "--config-file"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "cloud-init schema accepts a broken document"
    );
    let bad = dir.path().join("bad.sh");
    std::fs::write(&bad, "#!/bin/sh\nrm -rf $dir/*\n").unwrap();
    let out = Command::new(tools::require("shellcheck"))
        .args(["--severity=style", "--shell=sh"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "shellcheck accepts an unquoted expansion"
    );
}

#[test]
fn display_context_renders_without_any_secret() {
    let (files, env) = sample();
    let renderer = Renderer::new(
        &files,
        &env,
        "demo",
        SecretValues::redacted(&env),
        Mode::Display,
    )
    .unwrap();
    for g in &env.cloud.as_ref().unwrap().instances {
        let t = phoenix::env::validate::default_user_data(&g.role).unwrap();
        let text = renderer
            .user_data(&files, t, g, 0, &display_context(&env, &g.role))
            .unwrap();
        assert!(text.starts_with("#cloud-config"));
        assert!(!text.contains("BEGIN"), "no PEM in display output");
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Item 1 of issue 14: the user-data (whose hash decides whether the server is replaced) is the
/// same bytes from two empty homes, so a new machine computes the same plan.
#[test]
fn two_machines_with_the_same_secret_render_the_same_user_data_and_store_nothing() {
    let one = tempfile::tempdir().unwrap();
    let two = tempfile::tempdir().unwrap();
    let a = render_all(&derive(one.path(), "demo"));
    let b = render_all(&derive(two.path(), "demo"));
    assert_eq!(a, b, "the same commit and secret render the same user-data");
    for home in [&one, &two] {
        assert_eq!(
            std::fs::read_dir(home.path()).unwrap().count(),
            0,
            "deriving credentials writes nothing"
        );
    }
    // A drill copy, or another secret, gets other credentials.
    let drill = render_all(&derive(one.path(), "demo-drill-ab12"));
    assert_ne!(a[0].2, drill[0].2);
    let other = Credentials::derive(
        one.path(),
        "demo",
        &Secret::new(format!("{CLUSTER_SECRET}-rotated")),
    )
    .unwrap();
    assert_ne!(a[0].2, render_all(&other)[0].2);
    // The kubeconfig is the only file, written on request, private.
    let creds = derive(one.path(), "demo");
    let kubeconfig = write_kubeconfig(&creds, "https://10.40.1.12:6443").unwrap();
    assert_eq!(kubeconfig, one.path().join("clusters/demo/kubeconfig"));
    assert_eq!(mode(&kubeconfig), 0o600);
    assert_eq!(mode(&one.path().join("clusters/demo")), 0o700);
}

/// The derived certificates are real: openssl checks the CAs are self-signed with the keys
/// k3s is given, and the admin certificate chains to the client CA.
#[test]
fn derived_certificates_verify_with_openssl() {
    let home = tempfile::tempdir().unwrap();
    let creds = derive(home.path(), "demo");
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let server_ca = write("server-ca.crt", creds.server_ca_cert());
    let server_key = write("server-ca.key", creds.server_ca_key().expose());
    let client_ca = write("client-ca.crt", creds.client_ca_cert());
    let client_key = write("client-ca.key", creds.client_ca_key().expose());
    let admin = write("admin.crt", creds.admin_cert());
    let openssl = |args: &[&std::ffi::OsStr]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    for (ca, key) in [(&server_ca, &server_key), (&client_ca, &client_key)] {
        openssl(&[os("verify"), os("-CAfile"), ca.as_os_str(), ca.as_os_str()]);
        let cert_pub = openssl(&[
            os("x509"),
            os("-noout"),
            os("-pubkey"),
            os("-in"),
            ca.as_os_str(),
        ]);
        let key_pub = openssl(&[os("pkey"), os("-pubout"), os("-in"), key.as_os_str()]);
        assert_eq!(cert_pub, key_pub, "{} matches its key", ca.display());
    }
    openssl(&[
        os("verify"),
        os("-CAfile"),
        client_ca.as_os_str(),
        admin.as_os_str(),
    ]);
    let text = openssl(&[
        os("x509"),
        os("-noout"),
        os("-text"),
        os("-in"),
        server_ca.as_os_str(),
    ]);
    assert!(
        text.contains("CA:TRUE") && text.contains("prime256v1"),
        "{text}"
    );
}

#[test]
fn no_secret_in_debug_or_serialized_output() {
    let home = tempfile::tempdir().unwrap();
    let creds = derive(home.path(), "demo");
    let debug = format!(
        "{creds:?} {:?} {:?}",
        creds.server_token(),
        creds.agent_token()
    );
    let json = serde_json::to_string(&creds).unwrap();
    let secrets = [
        creds.server_ca_key().expose().to_string(),
        creds.client_ca_key().expose().to_string(),
        creds.admin_key().expose().to_string(),
        creds.server_token().expose().to_string(),
        creds.agent_secret().expose().to_string(),
    ];
    for s in &secrets {
        // Any 20-character run of a key's body would betray it; the token is checked whole.
        let body: String = s.lines().filter(|l| !l.starts_with("-----")).collect();
        let probe = &body[..body.len().min(20)];
        assert!(!debug.contains(probe), "Debug leaks a secret: {debug}");
        assert!(
            !json.contains(probe),
            "serialized credentials leak a secret: {json}"
        );
    }
    assert!(
        debug.contains("REDACTED") || debug.contains("redacted"),
        "{debug}"
    );
    assert!(json.contains("serverCaSha256"), "{json}");
    // The kubeconfig does hold the admin key (it is the credential), and only for https the CA.
    let kc = kubeconfig_value(&creds, "http://127.0.0.1:1/clusters/demo");
    assert!(kc["clusters"][0]["cluster"]
        .get("certificate-authority-data")
        .is_none());
    let kc = kubeconfig_value(&creds, "https://10.0.0.1:6443");
    assert!(kc["clusters"][0]["cluster"]["certificate-authority-data"].is_string());
}

/// What the mount script does at boot, run for real: in a private mount namespace, on a loop
/// device standing in for the EBS volume (linked as /dev/sdf and by its volume id, as udev does on
/// Nitro instances), a blank volume is formatted and mounted; after it is unmounted (a restore
/// brings back a volume with its filesystem), the same call mounts it as it is — the data is
/// there — and the fstab line is written once. Needs root and loop devices (`unshare`, `losetup`,
/// `mkfs.ext4` from util-linux and e2fsprogs).
#[test]
fn the_mount_script_formats_a_blank_volume_once_and_mounts_a_restored_one_as_it_is() {
    let creds = derive(tempfile::tempdir().unwrap().path(), "demo");
    let rendered = render_all(&creds);
    let (_, _, server) = rendered
        .iter()
        .find(|(_, role, _)| *role == Role::Server)
        .expect("a server");
    let script = scripts(&yaml(server))
        .into_iter()
        .find(|(path, _)| path == "/usr/local/lib/phoenix/mount-volumes.sh")
        .map(|(_, s)| s)
        .expect("the server mounts its volume");
    // The functions, without the calls for the sample's volumes: the harness makes its own.
    let functions = script
        .split("\nmount_volume \"")
        .next()
        .expect("script text")
        .to_string();
    assert!(functions.contains("mount_volume() {"), "{functions}");
    for tool in ["unshare", "losetup", "mkfs.ext4", "blkid", "mountpoint"] {
        testkit::tools::require(tool);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("mount-volumes.sh"), &functions).unwrap();
    std::fs::write(path("fstab"), "# test fstab\n").unwrap();
    std::fs::File::create(path("disk.img"))
        .and_then(|f| f.set_len(64 << 20))
        .unwrap();
    std::fs::create_dir(path("mnt")).unwrap();
    let harness = r#"
loop=$(losetup --find --show "$IMG")
n=${loop#/dev/loop}
cleanup() { umount "$MNT" 2>/dev/null || true; losetup -d "$loop"; }
trap cleanup EXIT
# A /dev of its own: the loop device as the attached volume, nothing of the machine's.
mount -t tmpfs -o mode=755 phoenix-test-dev /dev
mknod -m 666 /dev/null c 1 3
mknod -m 666 /dev/zero c 1 5
mknod -m 444 /dev/urandom c 1 9
mknod -m 660 "/dev/loop$n" b 7 "$n"
ln -s "loop$n" /dev/sdf
mkdir -p /dev/disk/by-id
ln -s "../../loop$n" /dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0
mount --bind "$FSTAB" /etc/fstab
. "$SCRIPT"
echo "== first boot"
mount_volume /dev/sdf "$MNT" ext4 data
echo "written before the restore" > "$MNT/data.txt"
umount "$MNT"
echo "== boot after a restore"
mount_volume /dev/sdf "$MNT" ext4 data
echo "data: $(cat "$MNT/data.txt")"
echo "fstab lines: $(grep -c " $MNT " /etc/fstab)"
"#;
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-eu",
            "-c",
            harness,
        ])
        .env("IMG", path("disk.img"))
        .env("MNT", path("mnt"))
        .env("FSTAB", path("fstab"))
        .env("SCRIPT", path("mount-volumes.sh"))
        .output()
        .expect("unshare runs");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the mount script on a loop device (needs root and loop devices):\n{all}"
    );
    let (first, second) = all
        .split_once("== boot after a restore")
        .expect("both boots ran");
    assert!(
        first.contains("volume data (/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0) is blank: formatting it ext4"),
        "found by its volume id and formatted: {all}"
    );
    assert!(
        second.contains("has a filesystem: mounting it as it is") && !second.contains("formatting"),
        "a restored volume is never formatted: {all}"
    );
    assert!(second.contains("data: written before the restore"), "{all}");
    assert!(second.contains("fstab lines: 1"), "{all}");
}
