//! Errors of the Kubernetes provider, and how each maps onto the engine's transient/permanent split.

use crate::engine::NodeError;

use super::object::ObjectRef;

/// What went wrong talking to a cluster or preparing the objects of a component.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// A manifest that is not a Kubernetes object (missing apiVersion, kind or metadata.name).
    #[error("{source_file}:{line}: {problem}")]
    InvalidManifest {
        source_file: String,
        line: usize,
        problem: String,
    },
    /// The same object appears twice in one component.
    #[error("{source_file}:{line}: {object} is also defined at {first}")]
    Duplicate {
        source_file: String,
        line: usize,
        object: Box<ObjectRef>,
        first: String,
    },
    /// The cluster serves no such apiVersion/kind.
    #[error(
        "{source_file}:{line}: the cluster serves no kind {kind} in {api_version} (is its CRD \
         installed, by this component or one it depends on?)"
    )]
    UnknownKind {
        source_file: String,
        line: usize,
        api_version: String,
        kind: String,
    },
    /// A live object with the same identity exists and lacks this component's marks.
    #[error(
        "{object} exists but is not managed by phoenix for environment {env} component \
         {component} ({found}); phoenix never modifies objects it does not own: delete or rename \
         it, or remove it from the component"
    )]
    NotOwned {
        object: Box<ObjectRef>,
        env: String,
        component: String,
        found: String,
    },
    /// Server-side apply found fields owned by another field manager.
    #[error(
        "{object}: field conflict with another manager: {detail}; the component sets \
         `forceConflicts: false`: remove that (or pass --force-conflicts) to take the fields back, \
         or list them under the component's `leaveFields` to leave them to that manager"
    )]
    Conflict {
        object: Box<ObjectRef>,
        detail: String,
    },
    /// The change sets a field fixed at creation; the object has to be deleted and created again.
    #[error("{object}: {detail}; only deleting and re-creating it applies this change")]
    Immutable {
        object: Box<ObjectRef>,
        detail: String,
    },
    /// The API server rejected a request or could not be reached.
    #[error("{action} {object}: {detail}")]
    Api {
        action: &'static str,
        object: String,
        detail: String,
        transient: bool,
    },
    /// Several objects of one batch failed; every one is named, in apply order.
    #[error("{} objects failed: {}", errors.len(), errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several {
        errors: Vec<KubeError>,
        transient: bool,
    },
    /// A Namespace or CRD phoenix would delete holds objects it does not own.
    #[error(
        "refusing to delete {object}: {detail}; move or delete those objects (or give them \
         phoenix's marks), then run again"
    )]
    HoldsForeign {
        object: Box<ObjectRef>,
        detail: String,
    },
    /// The inventory ConfigMap exists but cannot be read.
    #[error("inventory {name}: {problem}")]
    Inventory { name: String, problem: String },
}

impl KubeError {
    /// Whether a later attempt may succeed without a change in Git.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            KubeError::Api {
                transient: true,
                ..
            } | KubeError::Several {
                transient: true,
                ..
            }
        )
    }

    /// Wraps a kube client error for `action` (e.g. "applying") on `object`. The text is built from
    /// the API Status only (reason, code, message), never from a request body, so Secret data
    /// cannot leak through it.
    pub(crate) fn api(action: &'static str, object: impl ToString, err: &::kube::Error) -> Self {
        let (detail, transient) = describe(err);
        KubeError::Api {
            action,
            object: object.to_string(),
            detail,
            transient,
        }
    }
}

impl From<KubeError> for NodeError {
    fn from(err: KubeError) -> Self {
        if err.is_transient() {
            NodeError::transient(err.to_string())
        } else {
            NodeError::permanent(err.to_string())
        }
    }
}

/// A one-line description of a client error and whether retrying can help.
pub(crate) fn describe(err: &::kube::Error) -> (String, bool) {
    match err {
        ::kube::Error::Api(status) => {
            let code = status.code;
            let reason = if status.reason.is_empty() {
                "error".to_string()
            } else {
                status.reason.clone()
            };
            // A real API server answers a server-side apply whose body does not fit the schema (an
            // unknown field under strict validation) with a 500 "failed to create typed patch
            // object": the manifest is wrong, and no retry will fix it.
            let schema_error = code == 500
                && (status
                    .message
                    .contains("failed to create typed patch object")
                    || status.message.contains("field not declared in schema"));
            let transient = (matches!(code, 429 | 500 | 502 | 503 | 504) && !schema_error)
                || (code == 403 && status.message.contains("being terminated"))
                || (code == 409 && reason == "AlreadyExists")
                // A write that raced another ("the object has been modified"); SSA's field-manager
                // conflicts never get here (they are `KubeError::Conflict`).
                || (code == 409 && reason == "Conflict")
                // Its namespace may come from a component applied at the same time.
                || (code == 404 && status.message.starts_with("namespaces \""));
            (format!("{reason} ({code}): {}", status.message), transient)
        }
        // Connection, timeout, TLS and decoding problems: the server may be starting or busy.
        other => (other.to_string(), true),
    }
}

/// The HTTP status of an API error, if the server answered with one.
pub(crate) fn status_code(err: &::kube::Error) -> Option<u16> {
    match err {
        ::kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str, message: &str) -> ::kube::Error {
        let status: ::kube::core::Status = serde_json::from_value(serde_json::json!({
            "code": code, "reason": reason, "message": message
        }))
        .expect("status");
        ::kube::Error::Api(Box::new(status))
    }

    #[test]
    fn a_missing_namespace_is_retried_and_a_missing_object_is_not() {
        assert!(describe(&api(404, "NotFound", "namespaces \"web\" not found")).1);
        assert!(!describe(&api(404, "NotFound", "deployments.apps \"x\" not found")).1);
        assert!(describe(&api(503, "ServiceUnavailable", "busy")).1);
        assert!(!describe(&api(422, "Invalid", "spec.replicas: bad")).1);
        // What kube-apiserver 1.37 answers to a strict apply with a misspelled field.
        assert!(!describe(&api(
            500,
            "",
            "failed to create typed patch object (default/typo; apps/v1, Kind=Deployment): .spec.replica: field not declared in schema"
        ))
        .1);
        assert!(describe(&api(500, "InternalError", "etcdserver: request timed out")).1);
    }
}
