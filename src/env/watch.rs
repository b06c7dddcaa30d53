//! `spec.watch`: an environment's own settings for the fleet agent (`phoenix watch --all`):
//! how often it is checked, how long drift persists before the alert, and whether drift is
//! healed. Each one left out falls back to the agent's flag.

use super::decode::Decoder;
use super::yaml::Node;
use serde::{Serialize, Serializer};
use std::time::Duration;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchSettings {
    #[serde(serialize_with = "opt_duration")]
    pub interval: Option<Duration>,
    #[serde(serialize_with = "opt_duration")]
    pub alert_after: Option<Duration>,
    pub heal: Option<bool>,
}

fn opt_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
        None => s.serialize_none(),
    }
}

pub(super) fn decode_watch(d: &mut Decoder, n: &Node, p: &str) -> Option<WatchSettings> {
    let o = d.obj(n, p, &["interval", "alertAfter", "heal"])?;
    // The duration decoder refuses zero, so an interval is always positive.
    Some(WatchSettings {
        interval: d.opt(&o, "interval", Decoder::duration),
        alert_after: d.opt(&o, "alertAfter", Decoder::duration),
        heal: d.opt(&o, "heal", Decoder::bool),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::{load, MemFiles};

    fn env(watch: &str) -> String {
        format!(
            "apiVersion: phoenix/v1\nkind: Environment\nmetadata: {{ name: w }}\nspec:\n{watch}  cluster: {{ existing: {{ kubeconfig: /k }} }}\n"
        )
    }

    #[test]
    fn settings_decode_and_default_to_none() {
        let files = MemFiles::default().with(
            "environments/w/environment.yaml",
            &env("  watch: { interval: 5m, alertAfter: 30m, heal: true }\n"),
        );
        let e = load(&files, "w").expect("valid");
        assert_eq!(
            e.watch,
            WatchSettings {
                interval: Some(Duration::from_secs(300)),
                alert_after: Some(Duration::from_secs(1800)),
                heal: Some(true),
            }
        );
        let files = MemFiles::default().with("environments/w/environment.yaml", &env(""));
        assert_eq!(
            load(&files, "w").expect("valid").watch,
            WatchSettings::default()
        );
    }

    #[test]
    fn a_zero_interval_and_an_unknown_key_are_errors_with_their_line() {
        let files = MemFiles::default().with(
            "environments/w/environment.yaml",
            &env("  watch:\n    interval: 0s\n    every: 5m\n"),
        );
        let diags = load(&files, "w").expect_err("invalid");
        let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        assert!(
            text.iter().any(|t| t.contains(":6:")
                && t.contains("spec.watch.interval")
                && t.contains("longer than zero")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains(":7:") && t.contains("every")),
            "{text:?}"
        );
    }
}
