//! `phoenix completions` and `phoenix man` through the real binary: the scripts load in their
//! shell and complete phoenix's subcommands and flags, the man pages are valid roff with every
//! subcommand's options, and `--dir` writes world-readable pages whatever the umask. The scripts are checked in
//! bash, zsh and fish and the pages with groff: a missing one fails its test (scripts/setup installs them).

use clap::CommandFactory;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use testkit::tools;

/// The binary in `dir` with a throwaway HOME and PHOENIX_HOME and no phoenix settings from the
/// machine. `dir` is not a Git repository: neither command reads one.
fn command(home: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_phoenix"));
    cmd.current_dir(dir)
        .env("HOME", home)
        .env("PHOENIX_HOME", home.join("phoenix"))
        .env_remove("PHOENIX_REPO")
        .env_remove("PHOENIX_CLUSTER_ENDPOINT")
        .env_remove("PHOENIX_TRUSTED_KEYS")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    cmd
}

struct Bed {
    root: tempfile::TempDir,
}

impl Bed {
    fn new() -> Bed {
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(root.path().join("home")).expect("mkdir home");
        std::fs::create_dir_all(root.path().join("work")).expect("mkdir work");
        Bed { root }
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.root.path().join(rel)
    }

    fn phoenix(&self, args: &[&str]) -> Output {
        command(&self.path("home"), &self.path("work"))
            .args(args)
            .output()
            .expect("run phoenix")
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(out: &Output, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}\nstdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
}

/// Every visible subcommand of the clap definition, so commands added later are covered too.
fn subcommands() -> Vec<String> {
    phoenix::cli::Cli::command()
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| s.get_name().to_string())
        .collect()
}

/// Runs bash with the completion script loaded and asks it to complete `words`, the last being
/// the word under the cursor; returns the candidates.
fn bash_complete(script: &Path, words: &[&str]) -> Vec<String> {
    bash_complete_in(script, words, Path::new(env!("CARGO_MANIFEST_DIR")))
}

/// [`bash_complete`] with bash running in `dir`.
fn bash_complete_in(script: &Path, words: &[&str], dir: &Path) -> Vec<String> {
    let cword = words.len() - 1;
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let prev = if cword > 0 { words[cword - 1] } else { "" };
    let program = format!(
        "source '{}'\nCOMP_WORDS=({})\nCOMP_CWORD={cword}\nCOMP_LINE='{}'\nCOMP_POINT=${{#COMP_LINE}}\n\
         _phoenix phoenix '{}' '{prev}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script.display(),
        quoted.join(" "),
        words.join(" "),
        words[cword],
    );
    let out = Command::new("bash")
        .current_dir(dir)
        .args(["--norc", "--noprofile", "-c", &program])
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    assert_ok(&out, &format!("bash completing {words:?}"));
    stdout(&out)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn bash_completions_parse_and_complete_subcommands_and_flags() {
    let bed = Bed::new();
    let out = bed.phoenix(&["completions", "bash"]);
    assert_ok(&out, "phoenix completions bash");
    let script = stdout(&out);
    let path = bed.path("phoenix.bash");
    std::fs::write(&path, &script).expect("write script");

    let check = Command::new("bash")
        .arg("-n")
        .arg(&path)
        .output()
        .expect("run bash -n");
    assert_ok(&check, "bash -n on the completion script");

    let names = subcommands();
    for must in [
        "validate", "plan", "render", "rebuild", "destroy", "history",
    ] {
        assert!(
            names.iter().any(|n| n == must),
            "{must} is a subcommand: {names:?}"
        );
    }
    let offered = bash_complete(&path, &["phoenix", ""]);
    for name in &names {
        assert!(
            offered.contains(name),
            "`phoenix <TAB>` offers {name}: {offered:?}"
        );
    }
    assert_eq!(
        bash_complete(&path, &["phoenix", "reb"]),
        vec!["rebuild".to_string()]
    );
    let flags = bash_complete(&path, &["phoenix", "rebuild", "--"]);
    for flag in [
        "--layers",
        "--concurrency",
        "--force-conflicts",
        "--ref",
        "--repo",
    ] {
        assert!(
            flags.iter().any(|f| f == flag),
            "`phoenix rebuild --<TAB>` offers {flag}: {flags:?}"
        );
    }
    // A flag of another subcommand is not offered.
    assert!(
        !flags.iter().any(|f| f == "--detailed-exitcode"),
        "{flags:?}"
    );
    assert_eq!(
        bash_complete(&path, &["phoenix", "completions", "fi"]),
        vec!["fish".to_string()]
    );
    assert_eq!(
        bash_complete(&path, &["phoenix", "rebuild", "demo", "--layers", "c"]),
        vec!["cloud".to_string(), "cluster".to_string()]
    );

    // Environment names come from the commit at HEAD of the repository bash runs in.
    let repo = env_repo(&bed);
    assert_eq!(
        bash_complete_in(
            &path,
            &["phoenix", "rebuild", "al"],
            &repo.join("environments/alpha/sub")
        ),
        vec!["alpha".to_string(), "alpine".to_string()]
    );
    assert_eq!(
        bash_complete_in(&path, &["phoenix", "diff", "n"], &repo),
        Vec::<String>::new(),
        "a directory without environment.yaml is no environment"
    );
    assert_eq!(
        bash_complete_in(&path, &["phoenix", "plan", "b"], &repo),
        Vec::<String>::new(),
        "an environment not committed yet is not offered"
    );
}

/// A Git repository with the environments alpha and alpine committed, `environments/notes`
/// (no environment.yaml) committed, and `environments/beta` in the working tree only; plus
/// `environments/alpha/sub` to complete from below the top.
fn env_repo(bed: &Bed) -> std::path::PathBuf {
    let repo = bed.path("repo");
    std::fs::create_dir_all(repo.join("environments/alpha")).unwrap();
    std::fs::create_dir_all(repo.join("environments/alpine")).unwrap();
    std::fs::create_dir_all(repo.join("environments/notes")).unwrap();
    std::fs::write(repo.join("environments/alpha/environment.yaml"), "x").unwrap();
    std::fs::write(repo.join("environments/alpine/environment.yaml"), "x").unwrap();
    std::fs::write(repo.join("environments/notes/README.md"), "x").unwrap();
    for args in [
        &["init", "-q"][..],
        &["add", "-A"],
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@e",
            "commit",
            "-qm",
            "envs",
        ],
    ] {
        let st = Command::new("git")
            .current_dir(&repo)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", bed.path(""))
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "git {args:?}");
    }
    std::fs::create_dir_all(repo.join("environments/beta")).unwrap();
    std::fs::write(repo.join("environments/beta/environment.yaml"), "x").unwrap();
    std::fs::create_dir_all(repo.join("environments/alpha/sub")).unwrap();
    repo
}

/// Drives an interactive zsh in a pseudo-terminal (zsh/zpty): loads compinit and the script,
/// types `words` (the last being the word under the cursor, possibly partial) in `dir` and runs
/// completion from a widget bound to ^T, recording every candidate handed to `compadd`.
const ZSH_HARNESS: &str = r#"script=$1; dir=$2; shift 2
zmodload zsh/zpty || exit 3
zpty z zsh -f -i
zpty -w z "autoload -U compinit && compinit -u -D"
zpty -w z "source ${(q)script}"
zpty -w z "cd ${(q)dir}"
zpty -w z 'compadd() { local -a h; builtin compadd -A h "$@"; local m=HI; (( $#h )) && print -l -- "${m}T:"${^h}; builtin compadd "$@"; }'
zpty -w z '_t() { zle complete-word; local m=EN; print "${m}D:"; }; zle -N _t; bindkey "^T" _t'
zpty -w -n z "$*"$'\C-t'
out=()
while zpty -r z line; do out+=("$line"); [[ $line == *END:* ]] && break; done
zpty -d z
[[ $out[-1] == *END:* ]] || exit 4
print -rl -- "${(@)out}" | tr -d '\r' | sed -n 's/^.*HIT:\(.*\)$/\1/p' | sort -u
"#;

fn zsh_complete_in(bed: &Bed, script: &Path, words: &[&str], dir: &Path) -> Vec<String> {
    let harness = bed.path("complete.zsh");
    std::fs::write(&harness, ZSH_HARNESS).expect("write the zsh harness");
    // A hung pty must fail the test, not stall the suite.
    let out = Command::new("timeout")
        .arg("60")
        .args(["zsh", "-f"])
        .arg(&harness)
        .arg(script)
        .arg(dir)
        .args(words)
        .env("HOME", bed.path("home"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run zsh");
    assert_ok(&out, &format!("zsh completing {words:?}"));
    stdout(&out)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn zsh_completions_offer_environment_names_from_the_commit() {
    tools::require("zsh");
    let bed = Bed::new();
    let out = bed.phoenix(&["completions", "zsh"]);
    assert_ok(&out, "phoenix completions zsh");
    let path = bed.path("_phoenix");
    std::fs::write(&path, stdout(&out)).expect("write script");
    let repo = env_repo(&bed);

    assert_eq!(
        zsh_complete_in(
            &bed,
            &path,
            &["phoenix", "rebuild", "al"],
            &repo.join("environments/alpha/sub")
        ),
        vec!["alpha".to_string(), "alpine".to_string()],
        "ENV completes with the committed environments, from a subdirectory too"
    );
    assert_eq!(
        zsh_complete_in(&bed, &path, &["phoenix", "history", "alpi"], &repo),
        vec!["alpine".to_string()]
    );
    assert_eq!(
        zsh_complete_in(&bed, &path, &["phoenix", "diff", "n"], &repo),
        Vec::<String>::new(),
        "a directory without environment.yaml is no environment, and no file is offered"
    );
    assert_eq!(
        zsh_complete_in(&bed, &path, &["phoenix", "plan", "b"], &repo),
        Vec::<String>::new(),
        "an environment not committed yet is not offered"
    );
    // The rest of the script still completes.
    assert_eq!(
        zsh_complete_in(&bed, &path, &["phoenix", "reb"], &repo),
        vec!["rebuild".to_string()]
    );
    assert_eq!(
        zsh_complete_in(
            &bed,
            &path,
            &["phoenix", "rebuild", "alpha", "--layers", "c"],
            &repo
        ),
        vec!["cloud".to_string(), "cluster".to_string()]
    );
}

/// Asks fish (`complete -C`) for the candidates of the command line `line` in `dir`; returns
/// them without their descriptions.
fn fish_complete_in(bed: &Bed, script: &Path, line: &str, dir: &Path) -> Vec<String> {
    let program = format!("source '{}'; complete -C '{line}'", script.display());
    let out = Command::new("fish")
        .current_dir(dir)
        .args(["--no-config", "-c", &program])
        .env("HOME", bed.path("home"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run fish");
    assert_ok(&out, &format!("fish completing {line:?}"));
    let mut got: Vec<String> = stdout(&out)
        .lines()
        .map(|l| l.split('\t').next().unwrap_or_default().trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    got.sort();
    got
}

#[test]
fn fish_completions_offer_environment_names_from_the_commit() {
    tools::require("fish");
    let bed = Bed::new();
    let out = bed.phoenix(&["completions", "fish"]);
    assert_ok(&out, "phoenix completions fish");
    let path = bed.path("phoenix.fish");
    std::fs::write(&path, stdout(&out)).expect("write script");
    let repo = env_repo(&bed);

    assert_eq!(
        fish_complete_in(
            &bed,
            &path,
            "phoenix rebuild al",
            &repo.join("environments/alpha/sub")
        ),
        vec!["alpha".to_string(), "alpine".to_string()],
        "ENV completes with the committed environments, from a subdirectory too"
    );
    assert_eq!(
        fish_complete_in(&bed, &path, "phoenix --ref main history alpi", &repo),
        vec!["alpine".to_string()],
        "after global options too"
    );
    // fish falls back to substring matches, so these prefixes match nothing committed.
    assert_eq!(
        fish_complete_in(&bed, &path, "phoenix diff no", &repo),
        Vec::<String>::new(),
        "a directory without environment.yaml is no environment, and no file is offered"
    );
    assert_eq!(
        fish_complete_in(&bed, &path, "phoenix plan be", &repo),
        Vec::<String>::new(),
        "an environment not committed yet is not offered"
    );
    assert!(
        !fish_complete_in(&bed, &path, "phoenix list ", &repo)
            .iter()
            .any(|c| c == "alpha"),
        "a subcommand without ENV is not offered environment names"
    );
    assert_eq!(
        fish_complete_in(&bed, &path, "phoenix reb", &repo),
        vec!["rebuild".to_string()]
    );
}

#[test]
fn every_shell_gets_a_script_naming_every_subcommand() {
    let bed = Bed::new();
    let names = subcommands();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = bed.phoenix(&["completions", shell]);
        assert_ok(&out, &format!("phoenix completions {shell}"));
        let script = stdout(&out);
        for name in &names {
            assert!(
                script.contains(name.as_str()),
                "the {shell} script names {name}"
            );
        }
        // Syntax check in the shell itself (scripts/setup installs zsh and fish).
        let path = bed.path(&format!("phoenix.{shell}"));
        std::fs::write(&path, &script).expect("write script");
        let check: Option<(&str, Vec<&str>)> = match shell {
            "zsh" => Some(("zsh", vec!["-n"])),
            "fish" => Some(("fish", vec!["--no-execute"])),
            _ => None,
        };
        if let Some((tool, args)) = check {
            let out = Command::new(tools::require(tool))
                .args(&args)
                .arg(&path)
                .output()
                .expect("run the shell");
            assert_ok(&out, &format!("{tool} {args:?} on the {shell} script"));
        }
    }
}

#[test]
fn an_unknown_shell_is_refused_with_the_valid_ones() {
    let bed = Bed::new();
    let out = bed.phoenix(&["completions", "tcsh"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty(), "no script: {}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("tcsh") && err.contains("bash") && err.contains("zsh"),
        "{err}"
    );
}

#[test]
fn man_prints_one_page_per_command_with_the_rebuild_options() {
    let bed = Bed::new();
    let out = bed.phoenix(&["man"]);
    assert_ok(&out, "phoenix man");
    let roff = stdout(&out);
    assert!(roff.contains(".TH phoenix 1 "), "{roff}");
    for name in subcommands() {
        assert!(
            roff.contains(&format!(".TH phoenix-{name} 1 ")),
            "a page for {name}"
        );
    }
    // roff escapes '-' in text as "\-".
    let rebuild = page(&roff, "phoenix-rebuild");
    for opt in [
        r"\fB\-\-layers\fR",
        r"\fB\-\-concurrency\fR",
        r"\fB\-\-force\-conflicts\fR",
        r"\fB\-\-ref\fR",
    ] {
        assert!(
            rebuild.contains(opt),
            "rebuild's page has {opt}:\n{rebuild}"
        );
    }
    assert!(!rebuild.contains(r"\-\-detailed\-exitcode"), "{rebuild}");
    let top = page(&roff, "phoenix");
    assert!(top.contains(".SH \"EXIT STATUS\""), "{top}");
    for name in subcommands() {
        let sub = page(&roff, &format!("phoenix-{name}"));
        assert!(
            sub.contains(".SH \"EXIT STATUS\""),
            "{name}'s page has an EXIT STATUS section:\n{sub}"
        );
    }
    let diff = page(&roff, "phoenix-diff");
    assert!(
        diff.contains("\\fB2\\fR") && diff.contains("drift"),
        "diff's page gives exit 2 for drift:\n{diff}"
    );
    assert!(top.contains("PHOENIX_HOME"), "{top}");
    assert!(
        !top.contains("\"validate 0.1.0\"") && !rebuild.contains("\"rebuild 0.1.0\""),
        "the footer names phoenix, not the subcommand"
    );

    let path = bed.path("all.roff");
    std::fs::write(&path, &roff).expect("write roff");
    let out = Command::new(tools::require("groff"))
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(&path)
        .output()
        .expect("run groff");
    assert_ok(&out, "groff");
    assert!(out.stderr.is_empty(), "groff warnings:\n{}", stderr(&out));
}

/// The text of one page (from its `.TH` to the next page's preamble) in a `phoenix man` stream.
fn page<'a>(all: &'a str, title: &str) -> &'a str {
    let marker = format!(".TH {title} 1 ");
    let start = all
        .find(&marker)
        .unwrap_or_else(|| panic!("no page {title}"));
    let rest = &all[start..];
    let end = rest[1..].find(".TH ").map(|i| i + 1).unwrap_or(rest.len());
    &rest[..end]
}

#[cfg(unix)]
#[test]
fn man_dir_writes_world_readable_pages_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let bed = Bed::new();
    let dir = bed.path("out/man1");
    // A strict umask would make plain File::create give 0600 pages nobody else can read.
    let out = Command::new("sh")
        .arg("-c")
        .arg("umask 077 && exec \"$0\" man --dir \"$1\"")
        .arg(env!("CARGO_BIN_EXE_phoenix"))
        .arg(&dir)
        .current_dir(bed.path("work"))
        .env("HOME", bed.path("home"))
        .env("PHOENIX_HOME", bed.path("home/phoenix"))
        .stdin(Stdio::null())
        .output()
        .expect("run phoenix under sh");
    assert_ok(&out, "phoenix man --dir under umask 077");

    let mut expected: Vec<String> = vec!["phoenix.1".into()];
    expected.extend(subcommands().iter().map(|n| format!("phoenix-{n}.1")));
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .expect("read the man dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    expected.sort();
    assert_eq!(
        found, expected,
        "exactly one page per command, no temp files"
    );

    let listing = stdout(&out);
    let printed = bed.phoenix(&["man"]);
    let all = stdout(&printed);
    for name in &expected {
        let path = dir.join(name);
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "{name} is 0644, got {mode:o}");
        let text = std::fs::read_to_string(&path).expect("read page");
        assert!(
            all.contains(&text),
            "{name} is the same page `phoenix man` prints"
        );
        assert!(
            listing.contains(&path.display().to_string()),
            "the listing names {name}:\n{listing}"
        );
    }
    assert!(std::fs::read_to_string(dir.join("phoenix-rebuild.1"))
        .expect("read")
        .contains(r"\-\-force\-conflicts"));

    // Again, into the same directory, with --output json: replaces the pages, lists them as JSON.
    let out = bed.phoenix(&["man", "--dir", &dir.display().to_string(), "-o", "json"]);
    assert_ok(&out, "phoenix man --dir again, json");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON listing");
    assert_eq!(v["schemaVersion"], 1, "{v}");
    let files = v["files"].as_array().expect("files array");
    assert_eq!(files.len(), expected.len(), "{v}");
}

#[test]
fn man_dir_that_is_a_file_fails_naming_it() {
    let bed = Bed::new();
    let file = bed.path("not-a-dir");
    std::fs::write(&file, "x").expect("write");
    let out = bed.phoenix(&["man", "--dir", &file.display().to_string()]);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("not-a-dir") && err.contains("--dir"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).expect("read"), "x");
}
