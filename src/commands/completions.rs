//! `phoenix completions SHELL` and `phoenix man`: shell scripts and roff pages generated from the
//! clap definition, so every subcommand and flag appears in them without a second list to keep.

use super::Outcome;
use crate::cli::Cli;
use crate::error::{ExitCode, Failure};
use crate::report::output::FilesDoc;
use crate::workflow::Context;
use clap::CommandFactory;
use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

const BIN: &str = "phoenix";

/// One man page: its file name (`phoenix-rebuild.1`) and roff text.
struct Page {
    file: String,
    roff: Vec<u8>,
}

pub fn completions(shell: clap_complete::Shell) -> Outcome {
    let mut cmd = Cli::command();
    // The generators panic on a failed write; a Vec cannot fail, stdout can (a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, BIN, &mut script);
    let text = String::from_utf8_lossy(&script);
    script = match shell {
        clap_complete::Shell::Bash => bash_env_names(&text),
        clap_complete::Shell::Zsh => zsh_env_names(&text),
        clap_complete::Shell::Fish => fish_env_names(&text),
        _ => text.into_owned(),
    }
    .into_bytes();
    print(&script, "the completion script")
}

/// The names of the subcommands whose first positional argument is an environment name.
fn env_subcommands() -> Vec<String> {
    Cli::command()
        .get_subcommands()
        .filter(|s| {
            s.get_positionals()
                .next()
                .is_some_and(|a| a.get_id() == "env")
        })
        .map(|s| s.get_name().to_string())
        .collect()
}

/// The shell pipeline that lists the environments of the commit at HEAD of the repository around
/// the current directory: the directories under `environments/` that hold an `environment.yaml`,
/// as phoenix reads them (from the commit, not the working tree). One name per line.
const LIST_ENVS: &str = "git ls-tree -r --full-tree --name-only HEAD -- environments 2>/dev/null";

/// Teaches the bash script the environment names: where a subcommand takes ENV, it also offers
/// the environments of the commit at HEAD of the repository around the current directory (the
/// directories under `environments/` that hold an `environment.yaml`), as phoenix reads them.
fn bash_env_names(script: &str) -> String {
    let helper = format!(
        "_phoenix_envs() {{\n    {LIST_ENVS} \\\n        | sed -n 's#^environments/\\([^/]*\\)/environment\\.yaml$#\\1#p'\n}}\n\n"
    );
    const OFFER: &str = "                COMPREPLY=( $(compgen -W \"${opts}\" -- \"${cur}\") )";
    let mut out = String::with_capacity(script.len() + 512);
    out.push_str(&helper);
    let subs = env_subcommands();
    let mut in_env_sub = false;
    let mut pending = false;
    for line in script.lines() {
        let trimmed = line.trim();
        if let Some(name) = trimmed
            .strip_prefix("phoenix__subcmd__")
            .and_then(|r| r.strip_suffix(')'))
        {
            in_env_sub = subs.iter().any(|s| s == name);
        }
        if in_env_sub && trimmed.starts_with("if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]]") {
            pending = true;
        }
        if pending && line == OFFER {
            out.push_str(
                "                COMPREPLY=( $(compgen -W \"${opts} $(_phoenix_envs)\" -- \"${cur}\") )\n",
            );
            pending = false;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Teaches the zsh script the environment names: the ENV positional of every subcommand (clap's
/// `':env -- HELP:_default'` spec) completes with `_phoenix_envs`, which offers the environments
/// of the commit at HEAD (as for bash) instead of file names.
fn zsh_env_names(script: &str) -> String {
    let helper = format!(
        "(( $+functions[_phoenix_envs] )) ||\n_phoenix_envs() {{\n    local -a envs\n    envs=(${{(f)\"$({LIST_ENVS} | sed -n 's#^environments/\\([^/]*\\)/environment\\.yaml$#\\1#p')\"}})\n    _wanted environments expl 'environment' compadd -a envs\n}}\n\n"
    );
    // The closing `compdef`/`_phoenix "$@"` block runs the completion: the helper goes before it.
    const TAIL: &str = "if [ \"$funcstack[1]\" = \"_phoenix\" ]; then";
    let mut out = String::with_capacity(script.len() + 512);
    for line in script.lines() {
        if line == TAIL {
            out.push_str(&helper);
        }
        let trimmed = line.trim_start();
        match trimmed.strip_prefix("':env -- ").and_then(|_| {
            let end = line.rfind(":_default'")?;
            Some((&line[..end], &line[end + ":_default'".len()..]))
        }) {
            Some((spec, rest)) => {
                out.push_str(spec);
                out.push_str(":_phoenix_envs'");
                out.push_str(rest);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Teaches the fish script the environment names: right after a subcommand that takes ENV
/// (`phoenix [global options] SUBCOMMAND <TAB>`), fish offers the environments of the commit at
/// HEAD, as bash and zsh do, instead of file names.
fn fish_env_names(script: &str) -> String {
    let subs = env_subcommands().join(" ");
    format!(
        "{script}
# Environment names: the directories under environments/ holding an environment.yaml in the
# commit at HEAD of the repository around the current directory (phoenix reads the commit).
function __fish_phoenix_envs
    {LIST_ENVS} | string replace -r -f '^environments/([^/]+)/environment\\.yaml$' '$1'
end

# `phoenix [global options] SUBCOMMAND` with a SUBCOMMAND that takes ENV next.
function __fish_phoenix_wants_env
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_phoenix_global_optspecs) -- $cmd 2>/dev/null
    or return 1
    test (count $argv) -eq 1
    and contains -- $argv[1] {subs}
end

complete -c phoenix -n __fish_phoenix_wants_env -f -a '(__fish_phoenix_envs)' -d environment
"
    )
}

pub fn man(ctx: &Context, dir: Option<&Path>) -> Outcome {
    let pages = pages().map_err(|e| Failure::from_error("cannot render the man pages", &e))?;
    let Some(dir) = dir else {
        // One stream, one `.TH` per page: `phoenix man | man -l -` shows them in order.
        let all: Vec<u8> = pages.into_iter().flat_map(|p| p.roff).collect();
        return print(&all, "the man pages");
    };
    fs::create_dir_all(dir).map_err(|e| {
        Failure::from_error(format!("cannot create {}", dir.display()), &e)
            .help("pass --dir a directory you can write to")
    })?;
    let mut written = Vec::new();
    for page in &pages {
        let path = dir.join(&page.file);
        write_page(dir, &path, &page.roff).map_err(|e| {
            Failure::from_error(format!("cannot write {}", path.display()), &e)
                .help("pass --dir a directory you can write to")
        })?;
        written.push(path);
    }
    let listing = if ctx.json() {
        let files: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
        let doc = FilesDoc::new(None, files);
        match serde_json::to_string(&doc) {
            Ok(text) => format!("{text}\n"),
            Err(e) => {
                return Err(Failure::new(format!(
                    "cannot encode the list of pages: {e}"
                )))
            }
        }
    } else {
        written
            .iter()
            .map(|p| format!("wrote {}\n", p.display()))
            .collect()
    };
    print(listing.as_bytes(), "the list of written files")
}

/// The top page, then every visible subcommand's, depth first.
fn pages() -> std::io::Result<Vec<Page>> {
    // `help` is clap's own subcommand: `--help` is on every page already.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Building the parent first propagates the global options and gives each subcommand its
    // display name (`phoenix-rebuild`), which names its page.
    cmd.build();
    let source = format!("{BIN} {}", env!("CARGO_PKG_VERSION"));
    let mut pages = Vec::new();
    let top = Man::new(cmd.clone()).source(&source);
    let mut roff = Vec::new();
    top.render(&mut roff)?;
    top_sections().to_writer(&mut roff)?;
    pages.push(Page {
        file: top.get_filename(),
        roff,
    });
    subcommand_pages(&cmd, &source, &mut pages)?;
    Ok(pages)
}

fn subcommand_pages(
    parent: &clap::Command,
    source: &str,
    pages: &mut Vec<Page>,
) -> std::io::Result<()> {
    for sub in parent.get_subcommands().filter(|s| !s.is_hide_set()) {
        // Without it the footer would name the subcommand as the package (`rebuild 0.1.0`).
        let man = Man::new(sub.clone()).source(source);
        let mut roff = Vec::new();
        man.render(&mut roff)?;
        exit_status(sub.get_name()).to_writer(&mut roff)?;
        pages.push(Page {
            file: man.get_filename(),
            roff,
        });
        subcommand_pages(sub, source, pages)?;
    }
    Ok(())
}

/// The EXIT STATUS section of one subcommand's page: its codes, as in the README's table.
fn exit_status(command: &str) -> Roff {
    const OK: (&str, &str) = ("0", "success");
    const ERR: (&str, &str) = (
        "1",
        "error: invalid input, a failed run, or a check that could not be made",
    );
    let codes: Vec<(&str, &str)> = match command {
        "validate" => vec![
            ("0", "the environment is valid"),
            ("1", "it is invalid (every problem is printed)"),
        ],
        "plan" => vec![
            ("0", "planned (with --detailed-exitcode: nothing to do)"),
            ERR,
            ("2", "with --detailed-exitcode: changes pending"),
        ],
        "rebuild" | "up" => vec![
            ("0", "every selected layer converged"),
            ("1", "the run failed or was cancelled"),
        ],
        "diff" => vec![
            ("0", "in sync"),
            (
                "1",
                "a layer could not be checked (never reported as in sync)",
            ),
            ("2", "drift"),
        ],
        "watch" => vec![("0", "stopped (Ctrl-C)"), ("1", "it could not start")],
        "drill" => vec![
            ("0", "the copy converged within the recoveryObjective"),
            ("1", "the drill failed"),
            (
                "3",
                "the copy converged but took longer than the recoveryObjective",
            ),
        ],
        "completions" => vec![OK, ("2", "unknown shell")],
        _ => vec![OK, ERR],
    };
    let mut roff = Roff::new();
    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in codes {
        roff.control("TP", []);
        roff.text([bold(code)]);
        roff.text([roman(meaning)]);
    }
    roff
}

/// What clap does not know: the exit-code contract and where the procedures are.
fn top_sections() -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in [
        ("0", "done: valid, converged, in sync, or a drill within its recovery objective"),
        (
            "1",
            "error: invalid input, a failed run, or a check that could not be made (never reported as in sync)",
        ),
        (
            "2",
            "changes pending (plan --detailed-exitcode) or drift (diff)",
        ),
        (
            "3",
            "a drill converged but took longer than the environment's recoveryObjective",
        ),
    ] {
        roff.control("TP", []);
        roff.text([bold(code)]);
        roff.text([roman(meaning)]);
    }
    roff.control("SH", ["FILES"]);
    roff.control("TP", []);
    roff.text([bold("$PHOENIX_HOME")]);
    roff.text([roman(
        "state: kubeconfigs and generated credentials (clusters/ENV/), audit records, the clone cache",
    )]);
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(
        "The runbooks in the repository's runbooks/ directory (exit-codes.md, total-wipeout.md, \
         drift-alert.md, scheduled-drill.md, ephemeral-environments.md) and the documentation in docs/.",
    )]);
    roff
}

/// Writes a world-readable page through a temporary file and a rename, so a reader never sees a
/// half-written page and the mode does not depend on the caller's umask.
fn write_page(dir: &Path, path: &Path, roff: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp: PathBuf = dir.join(format!(
        ".{}.tmp-{}",
        name.unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(roff)?;
        file.sync_all()?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(0o644))?;
        }
        drop(file);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes to stdout. A reader that closed the pipe early (`| head`) got what it wanted.
fn print(bytes: &[u8], what: &str) -> Outcome {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(ExitCode::Ok),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::Ok),
        Err(e) => Err(Failure::from_error(format!("cannot print {what}"), &e)),
    }
}
