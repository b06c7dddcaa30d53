//! Helm hooks in a chart's output: which stage of the component's apply each object belongs to
//! (pre hooks by weight, the chart's ordinary objects, post hooks by weight), test hooks
//! skipped, and every other hook refused.

use std::fmt;

/// When an object is applied within its component. Stages go in this order (the derived `Ord`):
/// every `Pre` stage by ascending weight, then `Main`, then every `Post` stage by ascending
/// weight; each stage is applied and waited healthy before the next one starts. An object that is
/// not a Helm hook, and every object of a component that is not a chart, is in `Main`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// A pre-install / pre-upgrade hook of this `helm.sh/hook-weight`.
    Pre(i64),
    #[default]
    Main,
    /// A post-install / post-upgrade hook of this `helm.sh/hook-weight`.
    Post(i64),
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Pre(w) => write!(f, "pre-install/pre-upgrade hooks of weight {w}"),
            Stage::Main => f.write_str("the chart's objects"),
            Stage::Post(w) => write!(f, "post-install/post-upgrade hooks of weight {w}"),
        }
    }
}

/// What a chart's object is, read from its `helm.sh/hook*` annotations.
#[derive(Debug, PartialEq, Eq)]
pub enum Hook {
    /// Not a hook, or an install/upgrade hook: applied in this stage.
    Apply(Stage),
    /// A test hook (`helm test`): not applied.
    Test,
}

/// The hook delete policies phoenix accepts; what each means under phoenix is in docs/kube.md
/// (hook objects are kept as ordinary owned objects).
const DELETE_POLICIES: [&str; 3] = ["before-hook-creation", "hook-succeeded", "hook-failed"];

/// Reads an object's `metadata.annotations`. The error is the message for the user (the caller
/// names the file and object).
pub fn classify(annotations: &serde_json::Value) -> Result<Hook, String> {
    let Some(text) = annotations["helm.sh/hook"].as_str() else {
        return Ok(Hook::Apply(Stage::Main));
    };
    let hooks: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    if hooks.is_empty() {
        return Ok(Hook::Apply(Stage::Main));
    }
    if hooks.iter().all(|h| h.starts_with("test")) {
        return Ok(Hook::Test);
    }
    let pre = hooks
        .iter()
        .all(|h| matches!(*h, "pre-install" | "pre-upgrade"));
    let post = hooks
        .iter()
        .all(|h| matches!(*h, "post-install" | "post-upgrade"));
    if !pre && !post {
        let install = |h: &&str| {
            matches!(
                *h,
                "pre-install" | "pre-upgrade" | "post-install" | "post-upgrade"
            )
        };
        let odd: Vec<&str> = hooks.iter().copied().filter(|h| !install(h)).collect();
        let why = if odd.is_empty() {
            "it mixes pre and post hooks, so it has no single place in the apply".to_string()
        } else {
            format!(
                "phoenix runs only install/upgrade hooks (pre-install, pre-upgrade, post-install, \
                 post-upgrade), as part of converging the component; it has no delete or \
                 rollback step to run {} in",
                odd.join(", ")
            )
        };
        return Err(format!(
            "is a Helm hook ({}): refused: {why}",
            hooks.join(", ")
        ));
    }
    let weight = match annotations["helm.sh/hook-weight"].as_str() {
        None => 0,
        Some(w) => w.trim().parse::<i64>().map_err(|_| {
            format!(
                "has helm.sh/hook-weight {w:?}, which is not an integer (Helm orders hooks by \
                 it, so phoenix cannot guess)"
            )
        })?,
    };
    if let Some(policies) = annotations["helm.sh/hook-delete-policy"].as_str() {
        for p in policies.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if !DELETE_POLICIES.contains(&p) {
                return Err(format!(
                    "has helm.sh/hook-delete-policy {p:?}, which is not one of {}",
                    DELETE_POLICIES.join(", ")
                ));
            }
        }
    }
    Ok(Hook::Apply(if pre {
        Stage::Pre(weight)
    } else {
        Stage::Post(weight)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn of(a: serde_json::Value) -> Result<Hook, String> {
        classify(&a)
    }

    #[test]
    fn stages_order_pre_by_weight_then_main_then_post_by_weight() {
        let mut stages = vec![
            Stage::Post(-10),
            Stage::Main,
            Stage::Pre(5),
            Stage::Post(3),
            Stage::Pre(-5),
            Stage::Pre(0),
        ];
        stages.sort();
        assert_eq!(
            stages,
            vec![
                Stage::Pre(-5),
                Stage::Pre(0),
                Stage::Pre(5),
                Stage::Main,
                Stage::Post(-10),
                Stage::Post(3),
            ]
        );
        assert_eq!(Stage::default(), Stage::Main);
    }

    #[test]
    fn install_and_upgrade_hooks_get_their_stage_and_weight() {
        assert_eq!(of(json!(null)), Ok(Hook::Apply(Stage::Main)));
        assert_eq!(of(json!({"a": "b"})), Ok(Hook::Apply(Stage::Main)));
        assert_eq!(
            of(json!({"helm.sh/hook": "pre-install", "helm.sh/hook-weight": "-5"})),
            Ok(Hook::Apply(Stage::Pre(-5)))
        );
        assert_eq!(
            of(json!({"helm.sh/hook": "pre-install, pre-upgrade"})),
            Ok(Hook::Apply(Stage::Pre(0)))
        );
        assert_eq!(
            of(
                json!({"helm.sh/hook": "post-upgrade,post-install", "helm.sh/hook-weight": " 3 ",
                      "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded"})
            ),
            Ok(Hook::Apply(Stage::Post(3)))
        );
        assert_eq!(of(json!({"helm.sh/hook": "test"})), Ok(Hook::Test));
        assert_eq!(of(json!({"helm.sh/hook": "test-success"})), Ok(Hook::Test));
    }

    #[test]
    fn other_hooks_and_bad_weights_are_refused_saying_why() {
        let e = of(json!({"helm.sh/hook": "pre-delete"})).unwrap_err();
        assert!(
            e.contains("(pre-delete)") && e.contains("no delete or rollback"),
            "{e}"
        );
        let e = of(json!({"helm.sh/hook": "pre-install,post-delete"})).unwrap_err();
        assert!(
            e.contains("post-delete") && !e.contains("run pre-install"),
            "{e}"
        );
        let e = of(json!({"helm.sh/hook": "pre-rollback"})).unwrap_err();
        assert!(e.contains("pre-rollback"), "{e}");
        let e = of(json!({"helm.sh/hook": "pre-install,post-install"})).unwrap_err();
        assert!(e.contains("mixes pre and post"), "{e}");
        let e =
            of(json!({"helm.sh/hook": "pre-install", "helm.sh/hook-weight": "high"})).unwrap_err();
        assert!(
            e.contains("\"high\"") && e.contains("not an integer"),
            "{e}"
        );
        let e = of(json!({"helm.sh/hook": "post-install", "helm.sh/hook-delete-policy": "never"}))
            .unwrap_err();
        assert!(e.contains("\"never\""), "{e}");
    }
}
