//! Git for tests: hermetic `git` and `ssh-keygen` runs in temp dirs, and a `git daemon` guard.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use phoenix::source::SourceOptions;
use tempfile::TempDir;

/// A scratch area with its own HOME (so the machine's git config does not leak in) and its own `$PHOENIX_HOME`.
pub struct Sandbox {
    pub tmp: TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(tmp.path().join("home")).expect("home dir");
        Sandbox { tmp }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    pub fn home(&self) -> PathBuf {
        self.path("home")
    }

    pub fn phoenix_home(&self) -> PathBuf {
        self.path("phoenix-home")
    }

    /// Runs git in `dir` and returns stdout; panics with stderr if it fails.
    pub fn git(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.git_cmd(dir, args).output().expect("run git");
        assert!(
            out.status.success(),
            "git {args:?} in {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn git_cmd(&self, dir: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new("git");
        cmd.current_dir(dir)
            .env("HOME", self.home())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env_remove("GIT_CONFIG_GLOBAL")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("SSH_AUTH_SOCK")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@e",
                "-c",
                "commit.gpgsign=false",
                "-c",
                "tag.gpgsign=false",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args);
        cmd
    }

    /// A new non-bare repository with branch `main`.
    pub fn repo(&self, name: &str) -> Repo<'_> {
        let dir = self.path(name);
        std::fs::create_dir_all(&dir).expect("repo dir");
        self.git(&dir, &["init", "-q", "-b", "main"]);
        Repo { sb: self, dir }
    }

    /// An ed25519 key pair made by ssh-keygen; returns the private key path (the public key is `<path>.pub`).
    pub fn keygen(&self, name: &str) -> PathBuf {
        let key = self.path(name);
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&key)
            .env("HOME", self.home())
            .output()
            .expect("run ssh-keygen");
        assert!(
            out.status.success(),
            "ssh-keygen: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        key
    }

    /// The public key line of a key made by [`Sandbox::keygen`].
    pub fn public_key(&self, key: &Path) -> String {
        std::fs::read_to_string(pub_path(key))
            .expect("read .pub")
            .trim()
            .to_string()
    }

    /// The `SHA256:...` fingerprint ssh-keygen reports for a key.
    pub fn fingerprint(&self, key: &Path) -> String {
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(pub_path(key))
            .output()
            .expect("run ssh-keygen -l");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.split_whitespace()
            .nth(1)
            .expect("fingerprint field")
            .to_string()
    }

    /// Writes a trusted keys file outside any repository.
    pub fn keys_file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, content).expect("write keys file");
        path
    }

    pub fn options(&self, repo: impl Into<String>) -> SourceOptions {
        SourceOptions {
            repo: Some(repo.into()),
            reference: None,
            allow_dirty: false,
            home: self.phoenix_home(),
            trusted_keys: None,
            require_signed: false,
        }
    }
}

pub fn pub_path(key: &Path) -> PathBuf {
    let mut s = key.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

pub struct Repo<'a> {
    pub sb: &'a Sandbox,
    pub dir: PathBuf,
}

impl Repo<'_> {
    pub fn git(&self, args: &[&str]) -> String {
        self.sb.git(&self.dir, args)
    }

    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) {
        let path = self.dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, content).expect("write file");
    }

    /// `git add -A && git commit`; returns the new HEAD SHA.
    pub fn commit(&self, msg: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", msg]);
        self.head()
    }

    /// Like [`Repo::commit`], signed with an SSH key (`gpg.format=ssh`).
    pub fn commit_signed(&self, msg: &str, key: &Path) -> String {
        self.git(&["add", "-A"]);
        let key = key.to_str().expect("utf-8 key path");
        let signingkey = format!("user.signingkey={key}");
        self.git(&[
            "-c",
            "gpg.format=ssh",
            "-c",
            &signingkey,
            "commit",
            "-q",
            "--allow-empty",
            "-S",
            "-m",
            msg,
        ]);
        self.head()
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }

    pub fn path(&self) -> String {
        self.dir.to_str().expect("utf-8 temp path").to_string()
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.path())
    }
}

/// A `git daemon` serving every repository under a base path; killed when dropped.
pub struct Daemon {
    child: Child,
    pub port: u16,
}

impl Daemon {
    pub fn start(sb: &Sandbox, base: &Path) -> Daemon {
        // Pick a free ephemeral port by binding to it, then hand it to the daemon.
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind ephemeral port");
            listener.local_addr().expect("local addr").port()
        };
        let base_arg = format!("--base-path={}", base.display());
        let port_arg = format!("--port={port}");
        let child = sb
            .git_cmd(
                base,
                &[
                    "daemon",
                    "--export-all",
                    &base_arg,
                    "--listen=127.0.0.1",
                    &port_arg,
                    "--reuseaddr",
                    "--informative-errors",
                ],
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn git daemon");
        let mut daemon = Daemon { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return daemon;
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("git daemon exited early: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "git daemon did not listen on port {port} within 20s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, repo: &str) -> String {
        format!("git://127.0.0.1:{}/{repo}", self.port)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
