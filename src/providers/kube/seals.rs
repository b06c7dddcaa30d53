//! Seals: what phoenix has proved in sync, so that a diff need not prove it again.
//!
//! A seal says "object UID was equal to Git at resourceVersion RV, for the desired body with hash
//! H". The API server changes an object's resourceVersion on every write, so while the live
//! object still has RV and Git still renders a body with hash H, a server-side apply dry run of
//! that body would answer what it answered when the seal was made: in sync. A diff trusts the
//! seal instead of sending the dry run; any change by anyone (an edit, a scale, a label, a
//! controller writing status) moves the resourceVersion and sends the object back through the
//! dry run.
//!
//! Seals are made from evidence only:
//! - by a rebuild, from the object its apply returned (that is phoenix's own write), carried
//!   forward to the object the health wait saw last only when the two differ in nothing a dry
//!   run would show: status, bookkeeping (`resourceVersion`, `managedFields`), and labels or
//!   annotations Git does not set — what controllers write;
//! - by a diff, for an object its dry run found in sync.
//!
//! They are a local cache (`$PHOENIX_HOME/cache/seals/<env>/<layer>-<component>.json`), not
//! state: a missing, unreadable or foreign file only means the next diff sends every dry run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::object::{Marks, ObjectRef};
use super::ops;

const FORMAT: u32 = 1;

/// Where the seals of an environment are kept; [`SealStore::none`] keeps none (every diff sends
/// every dry run).
#[derive(Clone, Debug, Default)]
pub struct SealStore {
    dir: Option<PathBuf>,
}

impl SealStore {
    /// No seals: nothing read, nothing written.
    pub fn none() -> SealStore {
        SealStore { dir: None }
    }

    /// Seals of `env` under `$PHOENIX_HOME` (`phoenix_home`).
    pub fn under(phoenix_home: &Path, env: &str) -> SealStore {
        SealStore {
            dir: Some(phoenix_home.join("cache").join("seals").join(env)),
        }
    }

    /// Seals in `dir` (one file per component).
    pub fn in_dir(dir: impl Into<PathBuf>) -> SealStore {
        SealStore {
            dir: Some(dir.into()),
        }
    }

    /// The directory, when seals are kept.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    fn file(&self, marks: &Marks) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        Some(dir.join(format!("{}-{}.json", marks.layer.as_str(), marks.component)))
    }

    /// The component's seals; empty when there are none or the file cannot be used.
    pub(crate) fn load(&self, marks: &Marks) -> Seals {
        let Some(path) = self.file(marks) else {
            return Seals::default();
        };
        let Ok(text) = std::fs::read(&path) else {
            return Seals::default();
        };
        match serde_json::from_slice::<File>(&text) {
            Ok(f) if f.format == FORMAT && f.env == marks.env => Seals {
                by_uid: Mutex::new(f.objects),
            },
            _ => Seals::default(),
        }
    }

    /// Replaces the component's seals (atomically, owner-only). A failure is returned for the
    /// caller to ignore or mention: seals are a cache.
    pub(crate) fn save(&self, marks: &Marks, seals: Seals) -> std::io::Result<()> {
        let Some(path) = self.file(marks) else {
            return Ok(());
        };
        let objects = seals
            .by_uid
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let file = File {
            format: FORMAT,
            env: marks.env.clone(),
            objects,
        };
        let text = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("seals"),
            std::process::id()
        ));
        write_private(&tmp, &text)?;
        std::fs::rename(&tmp, &path).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }

    /// Forgets every seal of the environment (a destroyed or torn-down copy).
    pub fn forget_all(&self) -> std::io::Result<()> {
        match &self.dir {
            Some(dir) if dir.exists() => std::fs::remove_dir_all(dir),
            _ => Ok(()),
        }
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[derive(Serialize, Deserialize)]
struct File {
    format: u32,
    env: String,
    objects: HashMap<String, Seal>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Seal {
    rv: String,
    hash: String,
}

/// One component's seals while a command works on it.
#[derive(Debug, Default)]
pub(crate) struct Seals {
    by_uid: Mutex<HashMap<String, Seal>>,
}

impl Seals {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seal>> {
        self.by_uid
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `live` is sealed in sync for a desired body with hash `hash`.
    pub(crate) fn holds(&self, live: &Value, hash: &str) -> bool {
        let (Some(uid), Some(rv)) = (ops::uid(live), ops::resource_version(live)) else {
            return false;
        };
        self.lock()
            .get(&uid)
            .is_some_and(|s| s.rv == rv && s.hash == hash)
    }

    /// Seals `live` (as it is now) as in sync for the body with hash `hash`.
    pub(crate) fn seal(&self, live: &Value, hash: &str) {
        if let (Some(uid), Some(rv)) = (ops::uid(live), ops::resource_version(live)) {
            self.seal_id(&uid, rv, hash);
        }
    }

    /// Seals the object `uid` at `rv` (what phoenix's own apply returned).
    pub(crate) fn seal_id(&self, uid: &str, rv: &str, hash: &str) {
        if uid.is_empty() || rv.is_empty() {
            return;
        }
        self.lock().insert(
            uid.to_string(),
            Seal {
                rv: rv.to_string(),
                hash: hash.to_string(),
            },
        );
    }

    /// Drops the seal of `live`, if any.
    pub(crate) fn unseal(&self, live: &Value) {
        if let Some(uid) = ops::uid(live) {
            self.lock().remove(&uid);
        }
    }

    /// Keeps only the seals of these objects (the component's objects now).
    pub(crate) fn retain(&self, uids: &std::collections::HashSet<String>) {
        self.lock().retain(|uid, _| uids.contains(uid));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The hash a seal is made for: SHA-256 of the body phoenix sends for `id`. `None` for Secrets,
/// which are never sealed: a hash of a body whose only unknown is a short password would let
/// anyone who reads the cache guess the password offline.
pub(crate) fn body_hash(id: &ObjectRef, body: &Value) -> Option<String> {
    if id.is_secret() {
        return None;
    }
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Some(crate::providers::sha256_hex(&bytes))
}

/// Whether `now` is `applied` (what phoenix's apply of `desired` returned) with nothing changed
/// that a dry run of `desired` would show: status, write bookkeeping (`resourceVersion`,
/// `managedFields`), and labels or annotations that `desired` does not set (a controller's
/// `deployment.kubernetes.io/revision`, say; an apply leaves keys it does not set to whoever set
/// them). Anything else — a spec field, a changed generation, a label or annotation `desired`
/// sets — is not proof of being in sync.
pub(crate) fn only_others_moved(desired: &Value, applied: &Value, now: &Value) -> bool {
    if ops::uid(applied) != ops::uid(now) {
        return false;
    }
    strip(applied, desired) == strip(now, desired)
}

fn strip(object: &Value, desired: &Value) -> Value {
    let mut v = object.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
        if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
            meta.remove("managedFields");
            for map in ["labels", "annotations"] {
                let wanted = desired["metadata"][map].as_object();
                if let Some(keys) = meta.get_mut(map).and_then(Value::as_object_mut) {
                    keys.retain(|k, _| wanted.is_some_and(|w| w.contains_key(k)));
                }
                if meta
                    .get(map)
                    .and_then(Value::as_object)
                    .is_some_and(|m| m.is_empty())
                {
                    meta.remove(map);
                }
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::super::object::tests::marks;
    use super::*;
    use serde_json::json;

    fn object(rv: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "a", "namespace": "n", "uid": "u-1", "resourceVersion": rv},
               "data": {"k": "v"}})
    }

    #[test]
    fn a_seal_holds_for_its_resource_version_and_body_only() {
        let s = Seals::default();
        s.seal(&object("7"), "h1");
        assert!(s.holds(&object("7"), "h1"));
        assert!(
            !s.holds(&object("8"), "h1"),
            "any write moves the resourceVersion"
        );
        assert!(!s.holds(&object("7"), "h2"), "Git changed");
        let mut other = object("7");
        other["metadata"]["uid"] = json!("u-2");
        assert!(!s.holds(&other, "h1"), "a recreated object has a new uid");
        s.unseal(&object("7"));
        assert!(!s.holds(&object("7"), "h1"));
    }

    #[test]
    fn status_and_keys_git_leaves_to_others_carry_a_seal_forward_and_nothing_else_does() {
        let mut desired = object("0");
        desired["metadata"]["labels"] = json!({"team": "blue"});
        let mut applied = object("7");
        applied["metadata"]["labels"] = json!({"team": "blue"});
        let mut moved = applied.clone();
        moved["metadata"]["resourceVersion"] = json!("9");
        moved["status"] = json!({"ready": true});
        moved["metadata"]["managedFields"] = json!([{"manager": "controller"}]);
        moved["metadata"]["annotations"] = json!({"deployment.kubernetes.io/revision": "1"});
        moved["metadata"]["labels"]["extra"] = json!("x");
        assert!(only_others_moved(&desired, &applied, &moved));
        let mut label = moved.clone();
        label["metadata"]["labels"]["team"] = json!("red");
        assert!(
            !only_others_moved(&desired, &applied, &label),
            "a key Git sets"
        );
        let mut removed = moved.clone();
        removed["metadata"]["labels"] = json!({});
        assert!(
            !only_others_moved(&desired, &applied, &removed),
            "a key Git sets, gone"
        );
        let mut data = moved.clone();
        data["data"]["k"] = json!("w");
        assert!(!only_others_moved(&desired, &applied, &data));
        let mut generation = moved.clone();
        generation["metadata"]["generation"] = json!(2);
        assert!(!only_others_moved(&desired, &applied, &generation));
        let mut recreated = moved;
        recreated["metadata"]["uid"] = json!("u-2");
        assert!(!only_others_moved(&desired, &applied, &recreated));
    }

    #[test]
    fn seals_survive_a_save_and_a_bad_file_is_no_seals() {
        let dir = tempfile::tempdir().unwrap();
        let store = SealStore::in_dir(dir.path());
        let s = Seals::default();
        s.seal(&object("7"), "h1");
        store.save(&marks(), s).unwrap();
        assert!(store.load(&marks()).holds(&object("7"), "h1"));
        let file = dir.path().join("apps-web.json");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&file, b"{not json").unwrap();
        assert_eq!(store.load(&marks()).len(), 0);
        let mut other_env = marks();
        other_env.env = "prod".into();
        std::fs::write(
            &file,
            br#"{"format":1,"env":"demo","objects":{"u-1":{"rv":"7","hash":"h1"}}}"#,
        )
        .unwrap();
        assert_eq!(store.load(&marks()).len(), 1);
        assert_eq!(
            SealStore::in_dir(dir.path()).load(&other_env).len(),
            0,
            "another env's file name"
        );
        assert_eq!(SealStore::none().load(&marks()).len(), 0);
    }

    #[test]
    fn the_body_hash_follows_the_body_and_secrets_have_none() {
        let id = |kind: &str| ObjectRef {
            api_version: "v1".into(),
            kind: kind.into(),
            namespace: Some("n".into()),
            name: "a".into(),
        };
        let cm = id("ConfigMap");
        assert_eq!(body_hash(&cm, &object("1")), body_hash(&cm, &object("1")));
        assert_ne!(body_hash(&cm, &object("1")), body_hash(&cm, &object("2")));
        let mut secret = object("1");
        secret["kind"] = json!("Secret");
        assert_eq!(body_hash(&id("Secret"), &secret), None);
    }
}
