//! The Git source against real repositories made with the `git` CLI: refs, dirty trees, reading from the commit,
//! the clone cache (file:// and git daemon remotes) and the signed-commit policy with ssh-keygen keys.

use testkit::git;

use git::{Daemon, Sandbox};
use phoenix::source::{
    self, EntryKind, ResolvedRef, SignatureStatus, Snapshot, SourceError, SourceOptions,
    MAX_BLOB_SIZE,
};

fn open(opts: &SourceOptions) -> Snapshot {
    match source::open(opts) {
        Ok(snapshot) => snapshot,
        Err(e) => panic!("open failed: {e} ({e:?})"),
    }
}

fn open_err(opts: &SourceOptions) -> SourceError {
    match source::open(opts) {
        Ok(snapshot) => panic!("open succeeded on {:?}", snapshot.commit()),
        Err(e) => e,
    }
}

fn with_ref(mut opts: SourceOptions, reference: &str) -> SourceOptions {
    opts.reference = Some(reference.to_string());
    opts
}

#[test]
fn snapshot_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Snapshot>();
    assert_send_sync::<SourceError>();
}

#[test]
fn head_commit_is_read_with_its_metadata() {
    let sb = Sandbox::new();
    let repo = sb.repo("r");
    repo.write("environments/demo/environment.yaml", "kind: Environment\n");
    repo.write("templates/a.j2", "a");
    repo.write("templates/sub/b.j2", "bb");
    repo.write("README", "hello");
    let sha = repo.commit("first commit\n\nbody");

    let snap = open(&sb.options(repo.path()));
    let info = snap.commit();
    assert_eq!(info.sha, sha);
    assert!(sha.starts_with(&info.short_sha) && info.short_sha.len() >= 7);
    assert_eq!(info.summary, "first commit");
    assert_eq!(info.author_name, "t");
    assert_eq!(info.author_email, "t@e");
    assert!(info.time > 1_600_000_000);
    assert_eq!(info.reference, "HEAD");
    assert_eq!(
        info.resolved,
        ResolvedRef::Branch {
            name: "main".into()
        }
    );
    assert_eq!(info.repo, repo.path());
    assert_eq!(info.signature, SignatureStatus::Unsigned);

    assert_eq!(
        snap.read_to_string("environments/demo/environment.yaml")
            .unwrap(),
        "kind: Environment\n"
    );
    assert_eq!(snap.read("./templates//sub/b.j2").unwrap(), b"bb");
    assert!(snap.exists("templates/sub"));
    assert!(snap.is_dir("templates/sub"));
    assert!(snap.is_dir(""));
    assert!(!snap.is_dir("README"));
    assert!(!snap.exists("missing"));

    let root = snap.list_dir("").unwrap();
    let names: Vec<_> = root
        .iter()
        .map(|e| (e.name.as_str(), e.kind, e.size))
        .collect();
    assert_eq!(
        names,
        [
            ("README", EntryKind::File, 5),
            ("environments", EntryKind::Dir, 0),
            ("templates", EntryKind::Dir, 0),
        ]
    );
    let templates = snap.list_dir("templates").unwrap();
    assert_eq!(templates[0].path, "templates/a.j2");
    assert_eq!(templates[1].path, "templates/sub");
    assert_eq!(templates.len(), 2);

    assert_eq!(
        snap.walk_files("templates").unwrap(),
        ["templates/a.j2", "templates/sub/b.j2"]
    );
    assert_eq!(snap.walk_files("").unwrap().len(), 4);

    let err = snap.read("templates").unwrap_err();
    assert!(matches!(err, SourceError::IsADirectory { .. }), "{err}");
    let err = snap.list_dir("README").unwrap_err();
    assert!(matches!(err, SourceError::NotADirectory { .. }), "{err}");
    let err = snap.read("templates/nope.j2").unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("templates/nope.j2 not found in commit {}", info.short_sha)
    );
    let err = snap.read("README/x").unwrap_err();
    assert!(
        matches!(err, SourceError::NotADirectory { ref path, .. } if path == "README"),
        "{err}"
    );
}

#[test]
fn repository_is_discovered_from_the_current_directory() {
    // The only test that changes the process-wide current directory. Every other test in this binary names files
    // by absolute paths, so where the process stands does not matter to them; the guard puts it back (declared
    // after the sandbox, it is dropped first: before the directory it left is deleted).
    struct Restore(std::path::PathBuf);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::env::set_current_dir(&self.0);
        }
    }
    let sb = Sandbox::new();
    let _restore = Restore(std::env::current_dir().expect("the current directory"));
    let repo = sb.repo("r");
    repo.write("deep/er/file", "x");
    let sha = repo.commit("c");
    let mut opts = sb.options("unused");
    opts.repo = None;
    std::env::set_current_dir(repo.dir.join("deep/er")).unwrap();
    let snap = open(&opts);
    assert_eq!(snap.commit().sha, sha);
    assert_eq!(snap.read_to_string("deep/er/file").unwrap(), "x");

    std::env::set_current_dir(sb.path("home")).unwrap();
    let err = open_err(&opts);
    assert!(matches!(err, SourceError::NoRepository { .. }), "{err}");
    assert!(err.to_string().contains("--repo"), "{err}");
}

#[test]
fn branches_tags_and_shas_resolve_to_their_commits() {
    let sb = Sandbox::new();
    let repo = sb.repo("r");
    repo.write("f", "one");
    let first = repo.commit("one");
    repo.git(&["tag", "light"]);
    repo.git(&["tag", "-a", "v1", "-m", "release 1"]);
    repo.write("f", "two");
    let second = repo.commit("two");
    repo.git(&["checkout", "-q", "-b", "feature"]);
    repo.write("f", "feature");
    let feature = repo.commit("feature work");
    repo.git(&["checkout", "-q", "main"]);

    let base = sb.options(repo.path());
    let cases: [(&str, &str, &str, ResolvedRef); 8] = [
        (
            "HEAD",
            &second,
            "two",
            ResolvedRef::Branch {
                name: "main".into(),
            },
        ),
        (
            "main",
            &second,
            "two",
            ResolvedRef::Branch {
                name: "main".into(),
            },
        ),
        (
            "feature",
            &feature,
            "feature",
            ResolvedRef::Branch {
                name: "feature".into(),
            },
        ),
        (
            "light",
            &first,
            "one",
            ResolvedRef::Tag {
                name: "light".into(),
            },
        ),
        ("v1", &first, "one", ResolvedRef::Tag { name: "v1".into() }),
        (&first, &first, "one", ResolvedRef::Commit),
        (&first[..8], &first, "one", ResolvedRef::Commit),
        ("HEAD~1", &first, "one", ResolvedRef::Commit),
    ];
    for (reference, sha, content, resolved) in cases {
        let snap = open(&with_ref(base.clone(), reference));
        let info = snap.commit();
        assert_eq!(info.sha, *sha, "--ref {reference}");
        assert_eq!(info.reference, reference);
        assert_eq!(info.resolved, resolved, "--ref {reference}");
        assert_eq!(
            snap.read_to_string("f").unwrap(),
            content,
            "--ref {reference}"
        );
    }

    repo.git(&["checkout", "-q", "--detach", &first]);
    let snap = open(&base);
    assert_eq!(snap.commit().sha, first);
    assert_eq!(snap.commit().resolved, ResolvedRef::Commit);
}

#[test]
fn unknown_ref_names_the_ref_and_lists_branches_and_tags() {
    let sb = Sandbox::new();
    let repo = sb.repo("r");
    repo.commit("c");
    repo.git(&["branch", "develop"]);
    repo.git(&["tag", "v0.1"]);
    let err = open_err(&with_ref(sb.options(repo.path()), "no-such-branch"));
    assert!(matches!(err, SourceError::UnknownRef { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("\"no-such-branch\""), "{msg}");
    assert!(msg.contains(&repo.path()), "{msg}");
    assert!(msg.contains("branches: develop, main"), "{msg}");
    assert!(msg.contains("tags: v0.1"), "{msg}");

    let err = open_err(&with_ref(sb.options(repo.path()), "HEAD~5"));
    assert!(matches!(err, SourceError::UnknownRef { .. }), "{err:?}");

    let tree = repo.git(&["rev-parse", "HEAD^{tree}"]);
    let err = open_err(&with_ref(sb.options(repo.path()), &tree));
    assert!(matches!(err, SourceError::NotACommit { .. }), "{err:?}");
}

#[test]
fn empty_repository_and_non_repository_are_errors() {
    let sb = Sandbox::new();
    let repo = sb.repo("empty");
    let err = open_err(&sb.options(repo.path()));
    assert!(matches!(err, SourceError::UnbornHead { .. }), "{err:?}");

    std::fs::create_dir_all(sb.path("plain")).unwrap();
    let err = open_err(&sb.options(sb.path("plain").to_str().unwrap()));
    assert!(matches!(err, SourceError::NotARepository { .. }), "{err:?}");
}

#[test]
fn dirty_tree_is_refused_unless_allowed_and_commit_content_is_read() {
    let sb = Sandbox::new();
    let repo = sb.repo("r");
    repo.write("env.yaml", "committed\n");
    repo.write("other.yaml", "x\n");
    repo.commit("c");
    repo.write("env.yaml", "edited in the working tree\n");

    let opts = sb.options(repo.path());
    let err = open_err(&opts);
    let SourceError::Dirty {
        ref files,
        total,
        ref short_sha,
        ..
    } = err
    else {
        panic!("expected Dirty, got {err:?}");
    };
    assert_eq!(files, &["env.yaml"]);
    assert_eq!(total, 1);
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "phoenix reads commit {short_sha}, not the working tree"
        )),
        "{msg}"
    );
    assert!(msg.contains("--allow-dirty"), "{msg}");

    let mut allowed = opts.clone();
    allowed.allow_dirty = true;
    let snap = open(&allowed);
    assert_eq!(snap.read_to_string("env.yaml").unwrap(), "committed\n");

    // Staged but not committed is dirty too.
    repo.git(&["checkout", "--", "env.yaml"]);
    open(&opts);
    repo.write("other.yaml", "staged\n");
    repo.git(&["add", "other.yaml"]);
    let err = open_err(&opts);
    assert!(
        matches!(err, SourceError::Dirty { ref files, .. } if files == &["other.yaml"]),
        "{err:?}"
    );
    let snap = open(&allowed);
    assert_eq!(snap.read_to_string("other.yaml").unwrap(), "x\n");
}

#[test]
fn untracked_files_are_dirty_but_ignored_files_are_not() {
    let sb = Sandbox::new();
    let repo = sb.repo("r");
    repo.write(".gitignore", "*.log\nbuild/\n");
    repo.commit("c");
    repo.write("debug.log", "ignored");
    repo.write("build/out", "ignored");
    let opts = sb.options(repo.path());
    open(&opts);

    repo.write("new/untracked.yaml", "u");
    let err = open_err(&opts);
    assert!(
        matches!(err, SourceError::Dirty { ref files, .. } if files == &["new/untracked.yaml"]),
        "{err:?}"
    );
}

#[test]
fn dirty_error_lists_at_most_ten_files() {
    let sb = Sandbox::new();
    let repo = sb.repo("r");
    repo.commit("c");
    for i in 0..12 {
        repo.write(&format!("u{i:02}"), "x");
    }
    let err = open_err(&sb.options(repo.path()));
    let SourceError::Dirty {
        ref files, total, ..
    } = err
    else {
        panic!("expected Dirty, got {err:?}");
    };
    assert_eq!(files.len(), 10);
    assert_eq!(total, 12);
    assert!(err.to_string().contains("u00, u01"), "{err}");
    assert!(err.to_string().contains("and 2 more"), "{err}");
}

#[test]
fn bare_repository_path_is_local_and_never_dirty() {
    let sb = Sandbox::new();
    let repo = sb.repo("r");
    repo.write("f", "bare content");
    let sha = repo.commit("c");
    sb.git(
        sb.tmp.path(),
        &["clone", "-q", "--bare", &repo.path(), "bare.git"],
    );
    let bare = sb.path("bare.git");
    let snap = open(&sb.options(bare.to_str().unwrap()));
    assert_eq!(snap.commit().sha, sha);
    assert_eq!(snap.read_to_string("f").unwrap(), "bare content");
    assert!(
        !sb.phoenix_home().join("cache").exists(),
        "a local bare repo must not be cloned"
    );
}

#[test]
fn paths_that_leave_the_commit_are_rejected() {
    let sb = Sandbox::new();
    let repo = sb.repo("r");
    repo.write("a/b", "x");
    repo.commit("c");
    std::fs::write(sb.path("secret"), "outside").unwrap();
    let snap = open(&sb.options(repo.path()));
    for bad in [
        "../secret",
        "a/../../secret",
        "/etc/passwd",
        "a\\b",
        "a/b\0",
        "..",
    ] {
        let err = snap.read(bad).unwrap_err();
        assert!(
            matches!(err, SourceError::PathOutsideCommit { .. }),
            "{bad:?}: {err:?}"
        );
        assert!(err.to_string().contains("outside the commit"), "{err}");
        assert!(!snap.exists(bad), "{bad:?}");
        assert!(!snap.is_dir(bad), "{bad:?}");
        assert!(snap.list_dir(bad).is_err(), "{bad:?}");
        assert!(snap.walk_files(bad).is_err(), "{bad:?}");
    }
    assert_eq!(snap.read("a/b").unwrap(), b"x");
}

#[test]
fn symlinks_in_the_commit_are_never_followed() {
    let sb = Sandbox::new();
    let repo = sb.repo("r");
    repo.write("dir/real.yaml", "real");
    std::os::unix::fs::symlink("dir/real.yaml", repo.dir.join("link.yaml")).unwrap();
    std::os::unix::fs::symlink("dir", repo.dir.join("linkdir")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", repo.dir.join("passwd")).unwrap();
    repo.commit("links");
    let snap = open(&sb.options(repo.path()));

    let err = snap.read("link.yaml").unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "link.yaml is a symlink in the commit {}; phoenix does not follow symlinks",
            snap.commit().short_sha
        )
    );
    for path in ["passwd", "linkdir/real.yaml"] {
        let err = snap.read(path).unwrap_err();
        assert!(
            matches!(err, SourceError::Symlink { .. }),
            "{path}: {err:?}"
        );
    }
    assert!(matches!(
        snap.list_dir("linkdir").unwrap_err(),
        SourceError::Symlink { .. }
    ));
    assert!(snap.exists("linkdir") && !snap.is_dir("linkdir"));
    let kinds: Vec<_> = snap
        .list_dir("")
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.kind))
        .collect();
    assert!(
        kinds.contains(&("link.yaml".to_string(), EntryKind::Symlink)),
        "{kinds:?}"
    );
    assert_eq!(
        snap.walk_files("").unwrap(),
        ["dir/real.yaml", "link.yaml", "linkdir", "passwd"]
    );
}

#[test]
fn blobs_above_the_size_limit_are_refused() {
    let sb = Sandbox::new();
    let repo = sb.repo("r");
    let limit = MAX_BLOB_SIZE as usize;
    repo.write("at-limit.bin", vec![b'a'; limit]);
    repo.write("too-big.bin", vec![b'a'; limit + 1]);
    repo.commit("big");
    let snap = open(&sb.options(repo.path()));
    assert_eq!(snap.read("at-limit.bin").unwrap().len(), limit);
    let err = snap.read("too-big.bin").unwrap_err();
    assert!(
        matches!(err, SourceError::TooLarge { size, limit: l, .. } if size == MAX_BLOB_SIZE + 1 && l == MAX_BLOB_SIZE),
        "{err:?}"
    );
    assert!(err.to_string().contains("too-big.bin"), "{err}");
}

#[test]
fn non_utf8_file_is_an_error_for_read_to_string() {
    let sb = Sandbox::new();
    let repo = sb.repo("r");
    repo.write("bin", [b'o', b'k', 0xff, 0xfe]);
    repo.commit("c");
    let snap = open(&sb.options(repo.path()));
    assert_eq!(snap.read("bin").unwrap(), [b'o', b'k', 0xff, 0xfe]);
    let err = snap.read_to_string("bin").unwrap_err();
    assert!(
        matches!(err, SourceError::NotUtf8 { offset: 2, .. }),
        "{err:?}"
    );
}

/// A bare "remote" with one commit on main, and a work clone to push from.
fn remote_with_clone(sb: &Sandbox) -> (std::path::PathBuf, git::Repo<'_>) {
    let seed = sb.repo("seed");
    seed.write("f", "v1");
    seed.commit("v1");
    seed.git(&["tag", "v1"]);
    sb.git(
        sb.tmp.path(),
        &["clone", "-q", "--bare", &seed.path(), "remotes/remote.git"],
    );
    let remote = sb.path("remotes/remote.git");
    sb.git(
        sb.tmp.path(),
        &["clone", "-q", remote.to_str().unwrap(), "work"],
    );
    let work = git::Repo {
        sb,
        dir: sb.path("work"),
    };
    (remote, work)
}

#[test]
fn file_url_is_cloned_into_the_cache_and_fetched_on_the_next_open() {
    let sb = Sandbox::new();
    let (remote, work) = remote_with_clone(&sb);
    let url = format!("file://{}", remote.display());
    let opts = sb.options(url.clone());

    let snap = open(&opts);
    assert_eq!(snap.commit().repo, url);
    assert_eq!(
        snap.commit().resolved,
        ResolvedRef::Branch {
            name: "main".into()
        }
    );
    assert_eq!(snap.read_to_string("f").unwrap(), "v1");
    let cache = source::cache_dir(&sb.phoenix_home(), &url);
    assert!(
        cache.join("HEAD").is_file(),
        "no bare mirror at {}",
        cache.display()
    );
    drop(snap);

    // New commit, new branch and new tag on the remote; the next open sees them.
    work.write("f", "v2");
    let v2 = work.commit("v2");
    work.git(&["push", "-q", "origin", "main"]);
    work.git(&["push", "-q", "origin", "main:refs/heads/topic"]);
    work.git(&["tag", "v2"]);
    work.git(&["push", "-q", "origin", "v2"]);

    let snap = open(&opts);
    assert_eq!(snap.commit().sha, v2);
    assert_eq!(snap.read_to_string("f").unwrap(), "v2");
    assert_eq!(open(&with_ref(opts.clone(), "topic")).commit().sha, v2);
    let tag = open(&with_ref(opts.clone(), "v2"));
    assert_eq!(
        tag.commit().resolved,
        ResolvedRef::Tag { name: "v2".into() }
    );
    assert_eq!(
        open(&with_ref(opts.clone(), "v1"))
            .read_to_string("f")
            .unwrap(),
        "v1"
    );

    // A branch deleted on the remote is pruned from the cache.
    work.git(&["push", "-q", "origin", "--delete", "topic"]);
    let err = open_err(&with_ref(opts.clone(), "topic"));
    assert!(matches!(err, SourceError::UnknownRef { .. }), "{err:?}");

    // The working tree of the cache is never consulted, so the clone can't be dirty: there is none.
    assert!(!cache.join("f").exists());
}

#[test]
fn fetch_failure_with_an_existing_cache_is_an_error() {
    let sb = Sandbox::new();
    let (remote, _work) = remote_with_clone(&sb);
    let url = format!("file://{}", remote.display());
    open(&sb.options(url.clone()));
    std::fs::rename(&remote, sb.path("remotes/moved.git")).unwrap();
    let err = open_err(&sb.options(url.clone()));
    assert!(matches!(err, SourceError::Fetch { .. }), "{err:?}");
    assert!(err.to_string().contains(&url), "{err}");
    assert!(err.to_string().contains("stale"), "{err}");
}

#[test]
fn clone_failure_names_the_url_and_leaves_no_cache() {
    let sb = Sandbox::new();
    let url = format!("file://{}", sb.path("does-not-exist.git").display());
    let err = open_err(&sb.options(url.clone()));
    assert!(matches!(err, SourceError::Clone { .. }), "{err:?}");
    assert!(err.to_string().contains(&url), "{err}");
    let repos = sb.phoenix_home().join("cache/repos");
    let left: Vec<_> = std::fs::read_dir(&repos)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "cache not cleaned up: {left:?}");
}

#[test]
fn url_without_ref_follows_the_remote_default_branch() {
    let sb = Sandbox::new();
    let (remote, work) = remote_with_clone(&sb);
    work.git(&["checkout", "-q", "-b", "trunk"]);
    work.write("f", "trunk");
    let trunk = work.commit("trunk");
    work.git(&["push", "-q", "origin", "trunk"]);
    sb.git(&remote, &["symbolic-ref", "HEAD", "refs/heads/trunk"]);
    let snap = open(&sb.options(format!("file://{}", remote.display())));
    assert_eq!(snap.commit().sha, trunk);
    assert_eq!(
        snap.commit().resolved,
        ResolvedRef::Branch {
            name: "trunk".into()
        }
    );
}

#[test]
fn git_daemon_remote_is_cloned_and_fetched() {
    let sb = Sandbox::new();
    let (_remote, work) = remote_with_clone(&sb);
    let daemon = Daemon::start(&sb, &sb.path("remotes"));
    let url = daemon.url("remote.git");
    let opts = sb.options(url.clone());

    let snap = open(&opts);
    assert_eq!(snap.read_to_string("f").unwrap(), "v1");
    assert_eq!(snap.commit().repo, url);

    work.write("f", "v2");
    let v2 = work.commit("v2");
    work.git(&["push", "-q", "origin", "main"]);
    let snap = open(&with_ref(opts.clone(), "main"));
    assert_eq!(snap.commit().sha, v2);
    assert_eq!(
        open(&with_ref(opts, "v1")).read_to_string("f").unwrap(),
        "v1"
    );

    let err = open_err(&sb.options(daemon.url("missing.git")));
    assert!(matches!(err, SourceError::Clone { .. }), "{err:?}");
}

// ---- signed-commit policy ----

fn trusted(mut opts: SourceOptions, keys: &std::path::Path) -> SourceOptions {
    opts.trusted_keys = Some(keys.to_path_buf());
    opts
}

#[test]
fn commit_signed_by_a_trusted_key_is_verified() {
    let sb = Sandbox::new();
    let key = sb.keygen("alice");
    let repo = sb.repo("r");
    repo.write("f", "x");
    let sha = repo.commit_signed("signed", &key);
    let keys = sb.keys_file("keys", &format!("# ops team\n\n{}\n", sb.public_key(&key)));

    let snap = open(&trusted(sb.options(repo.path()), &keys));
    assert_eq!(snap.commit().sha, sha);
    assert_eq!(
        snap.commit().signature,
        SignatureStatus::Verified {
            fingerprint: sb.fingerprint(&key),
            principal: None
        }
    );

    // allowed_signers format carries the principal.
    let signers = sb.keys_file(
        "allowed_signers",
        &format!(
            "alice@example.com namespaces=\"git\" {}\n",
            sb.public_key(&key)
        ),
    );
    let snap = open(&trusted(sb.options(repo.path()), &signers));
    assert!(
        matches!(&snap.commit().signature, SignatureStatus::Verified { principal: Some(p), .. } if p == "alice@example.com"),
        "{:?}",
        snap.commit().signature
    );

    // Without a policy, a signed commit is reported but not checked.
    assert_eq!(
        open(&sb.options(repo.path())).commit().signature,
        SignatureStatus::NotChecked
    );
}

#[test]
fn unsigned_commit_is_refused_under_the_policy() {
    let sb = Sandbox::new();
    let key = sb.keygen("alice");
    let repo = sb.repo("r");
    repo.commit("unsigned");
    let keys = sb.keys_file("keys", &sb.public_key(&key));
    let err = open_err(&trusted(sb.options(repo.path()), &keys));
    let short = &repo.head()[..7];
    assert!(matches!(err, SourceError::Unsigned { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.starts_with(&format!("commit {short}")), "{msg}");
    assert!(
        msg.contains(
            "is not signed; the signing policy requires an SSH signature from a trusted key (from"
        ),
        "{msg}"
    );
    assert!(msg.contains(keys.to_str().unwrap()), "{msg}");

    // --require-signed alone, with no keys anywhere, is a configuration error rather than a pass.
    let mut opts = sb.options(repo.path());
    opts.require_signed = true;
    let err = open_err(&opts);
    assert!(matches!(err, SourceError::NoTrustedKeys { .. }), "{err:?}");
    assert!(err.to_string().contains("--trusted-keys"), "{err}");
}

#[test]
fn commit_signed_by_an_untrusted_key_is_refused_with_its_fingerprint() {
    let sb = Sandbox::new();
    let alice = sb.keygen("alice");
    let mallory = sb.keygen("mallory");
    let repo = sb.repo("r");
    repo.commit_signed("by mallory", &mallory);
    let keys = sb.keys_file("keys", &sb.public_key(&alice));
    let err = open_err(&trusted(sb.options(repo.path()), &keys));
    let fingerprint = sb.fingerprint(&mallory);
    assert!(fingerprint.starts_with("SHA256:"));
    assert!(
        matches!(err, SourceError::UntrustedKey { fingerprint: ref f, .. } if *f == fingerprint),
        "{err:?}"
    );
    assert!(err.to_string().contains(&fingerprint), "{err}");

    // A key restricted to another namespace does not count for git.
    let keys = sb.keys_file(
        "ns",
        &format!("m namespaces=\"file\" {}\n", sb.public_key(&mallory)),
    );
    let err = open_err(&trusted(sb.options(repo.path()), &keys));
    assert!(matches!(err, SourceError::UntrustedKey { .. }), "{err:?}");
}

#[test]
fn tampered_commit_fails_verification() {
    let sb = Sandbox::new();
    let key = sb.keygen("alice");
    let repo = sb.repo("r");
    repo.write("f", "x");
    repo.commit_signed("original message", &key);
    // Same signature header, different content: a forged commit object.
    let raw = repo.git(&["cat-file", "commit", "HEAD"]);
    assert!(
        raw.contains("gpgsig -----BEGIN SSH SIGNATURE-----"),
        "{raw}"
    );
    let forged = raw.replace("original message", "forged message") + "\n";
    let forged_path = sb.path("forged");
    std::fs::write(&forged_path, forged).unwrap();
    let oid = repo.git(&[
        "hash-object",
        "-t",
        "commit",
        "-w",
        forged_path.to_str().unwrap(),
    ]);
    repo.git(&["update-ref", "refs/heads/forged", &oid]);

    let keys = sb.keys_file("keys", &sb.public_key(&key));
    let opts = trusted(sb.options(repo.path()), &keys);
    open(&opts);
    let err = open_err(&with_ref(opts, "forged"));
    assert!(matches!(err, SourceError::BadSignature { .. }), "{err:?}");
    assert!(err.to_string().contains(&sb.fingerprint(&key)), "{err}");
}

#[test]
fn pgp_signature_is_refused_as_unsupported() {
    let sb = Sandbox::new();
    let key = sb.keygen("alice");
    let repo = sb.repo("r");
    repo.commit("c");
    let tree = repo.git(&["rev-parse", "HEAD^{tree}"]);
    let object = format!(
        "tree {tree}\nauthor t <t@e> 1700000000 +0000\ncommitter t <t@e> 1700000000 +0000\n\
         gpgsig -----BEGIN PGP SIGNATURE-----\n \n iQEzBAABCAAdFiEE\n -----END PGP SIGNATURE-----\n\npgp signed\n"
    );
    let path = sb.path("pgp");
    std::fs::write(&path, object).unwrap();
    let oid = repo.git(&["hash-object", "-t", "commit", "-w", path.to_str().unwrap()]);
    repo.git(&["update-ref", "refs/heads/pgp", &oid]);

    let keys = sb.keys_file("keys", &sb.public_key(&key));
    let err = open_err(&with_ref(trusted(sb.options(repo.path()), &keys), "pgp"));
    assert!(
        matches!(err, SourceError::UnsupportedSignature { ref format, .. } if format == "PGP"),
        "{err:?}"
    );
    // No policy: reported as signed but not checked.
    let snap = open(&with_ref(sb.options(repo.path()), "pgp"));
    assert_eq!(snap.commit().signature, SignatureStatus::NotChecked);
}

#[test]
fn in_repo_trusted_keys_file_enables_the_policy() {
    let sb = Sandbox::new();
    let alice = sb.keygen("alice");
    let bob = sb.keygen("bob");
    let repo = sb.repo("r");
    repo.write(
        ".phoenix/trusted-keys",
        format!("{}\n", sb.public_key(&alice)),
    );
    repo.commit("unsigned, with the keys file");
    let opts = sb.options(repo.path());

    let err = open_err(&opts);
    assert!(matches!(err, SourceError::Unsigned { .. }), "{err:?}");
    assert!(
        err.to_string().contains(".phoenix/trusted-keys in commit"),
        "{err}"
    );

    repo.commit_signed("signed by alice", &alice);
    let snap = open(&opts);
    assert!(
        matches!(snap.commit().signature, SignatureStatus::Verified { .. }),
        "{:?}",
        snap.commit().signature
    );

    repo.commit_signed("signed by bob", &bob);
    let err = open_err(&opts);
    assert!(matches!(err, SourceError::UntrustedKey { .. }), "{err:?}");

    // A bad line in the in-repo file names the commit, the file and the line.
    repo.write(
        ".phoenix/trusted-keys",
        format!("{}\nssh-ed25519 !!!\n", sb.public_key(&alice)),
    );
    repo.commit_signed("broken keys file", &alice);
    let err = open_err(&opts);
    let msg = err.to_string();
    assert!(msg.contains(":.phoenix/trusted-keys:2:"), "{msg}");
}

#[test]
fn trusted_keys_flag_overrides_the_in_repo_file() {
    let sb = Sandbox::new();
    let alice = sb.keygen("alice");
    let bob = sb.keygen("bob");
    let repo = sb.repo("r");
    // Bob pushes a commit that adds his own key to the in-repo list and signs it.
    repo.write(
        ".phoenix/trusted-keys",
        format!("{}\n", sb.public_key(&bob)),
    );
    repo.commit_signed("bob trusts bob", &bob);
    assert!(matches!(
        open(&sb.options(repo.path())).commit().signature,
        SignatureStatus::Verified { .. }
    ));

    let only_alice = sb.keys_file("alice-only", &sb.public_key(&alice));
    let err = open_err(&trusted(sb.options(repo.path()), &only_alice));
    assert!(matches!(err, SourceError::UntrustedKey { .. }), "{err:?}");
    assert!(
        err.to_string().contains(only_alice.to_str().unwrap()),
        "{err}"
    );

    // And a commit by Alice passes with --trusted-keys even though the in-repo file lists only Bob.
    repo.commit_signed("alice", &alice);
    let snap = open(&trusted(sb.options(repo.path()), &only_alice));
    assert!(matches!(
        snap.commit().signature,
        SignatureStatus::Verified { .. }
    ));
    let err = open_err(&sb.options(repo.path()));
    assert!(matches!(err, SourceError::UntrustedKey { .. }), "{err:?}");
}

#[test]
fn bad_or_empty_trusted_keys_files_are_errors() {
    let sb = Sandbox::new();
    let key = sb.keygen("alice");
    let repo = sb.repo("r");
    repo.commit_signed("c", &key);
    let bad = sb.keys_file("bad", &format!("{}\nnot-a-key-line\n", sb.public_key(&key)));
    let err = open_err(&trusted(sb.options(repo.path()), &bad));
    assert!(
        matches!(err, SourceError::TrustedKeysLine { line: 2, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with(&format!("{}:2: ", bad.display())),
        "{err}"
    );

    let empty = sb.keys_file("empty", "# nobody\n");
    let err = open_err(&trusted(sb.options(repo.path()), &empty));
    assert!(matches!(err, SourceError::NoTrustedKeys { .. }), "{err:?}");
    assert!(err.to_string().contains("lists no keys"), "{err}");

    let err = open_err(&trusted(sb.options(repo.path()), &sb.path("missing-file")));
    assert!(
        matches!(err, SourceError::TrustedKeysRead { .. }),
        "{err:?}"
    );
}

#[test]
fn submodules_are_listed_but_not_read() {
    let sb = Sandbox::new();
    let sub = sb.repo("sub");
    sub.write("inner.yaml", "inner");
    sub.commit("sub");
    let repo = sb.repo("r");
    repo.write("top.yaml", "top");
    repo.git(&[
        "-c",
        "protocol.file.allow=always",
        "submodule",
        "add",
        "-q",
        &sub.path(),
        "vendor/sub",
    ]);
    repo.commit("with submodule");
    let snap = open(&sb.options(repo.path()));
    for path in ["vendor/sub", "vendor/sub/inner.yaml"] {
        let err = snap.read(path).unwrap_err();
        assert!(
            matches!(err, SourceError::Submodule { path: ref p, .. } if p == "vendor/sub"),
            "{path}: {err:?}"
        );
    }
    assert!(matches!(
        snap.list_dir("vendor/sub").unwrap_err(),
        SourceError::Submodule { .. }
    ));
    let vendor = snap.list_dir("vendor").unwrap();
    assert_eq!(vendor.len(), 1);
    assert_eq!(vendor[0].kind, EntryKind::Submodule);
    assert_eq!(
        snap.walk_files("").unwrap(),
        [".gitmodules", "top.yaml", "vendor/sub"]
    );
}

#[test]
fn commit_info_serializes_for_reports() {
    let sb = Sandbox::new();
    let repo = sb.repo("r");
    let sha = repo.commit("c");
    let snap = open(&sb.options(repo.path()));
    let json = serde_json::to_value(snap.commit()).unwrap();
    assert_eq!(json["sha"], sha.as_str());
    assert_eq!(json["reference"], "HEAD");
    assert_eq!(
        json["resolved"],
        serde_json::json!({"kind": "branch", "name": "main"})
    );
    assert_eq!(json["signature"], serde_json::json!({"status": "unsigned"}));
}
