//! `phoenix render ENV`: the rendered user-data and manifests, secrets redacted.

use super::Outcome;
use crate::env;
use crate::error::{ExitCode, Failure};
use crate::render::{Mode, Renderer, SecretValues};
use crate::report::output::{commit_json_camel, commit_line, print_json};
use crate::workflow::{load_env, Context};

/// The version of the `render --output json` document (docs/json.md).
pub const RENDER_SCHEMA_VERSION: u32 = 1;

/// `render --output json`: every rendered file, secrets redacted.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct RenderDoc<'a> {
    schema_version: u32,
    env: &'a str,
    commit: serde_json::Value,
    outputs: Vec<RenderedDoc<'a>>,
}

#[derive(serde::Serialize)]
struct RenderedDoc<'a> {
    /// `user-data instance/NAME/I` or `component NAME`.
    what: &'a str,
    /// The template or file in the commit it came from.
    source: &'a str,
    content: &'a str,
}

pub async fn run(ctx: &Context, name: &str, component: Option<&str>) -> Outcome {
    let snap = ctx.open().await?;
    let env = load_env(ctx, &snap, name)?;
    let fail = |e: crate::render::RenderError| {
        Failure::new(format!("cannot render {name}")).cause(e.to_string())
    };
    // Display mode: secret values are never read, so nothing secret can be printed.
    let renderer = Renderer::new(
        &*snap,
        &env,
        &env.name,
        SecretValues::redacted(&env),
        Mode::Display,
    )
    .map_err(fail)?;
    let mut outputs: Vec<(String, String, String)> = Vec::new(); // (what, source, content)
    if let Some(c) = component {
        if !env.addons.iter().chain(&env.apps).any(|x| x.name == c) {
            let names: Vec<&str> = env
                .addons
                .iter()
                .chain(&env.apps)
                .map(|x| x.name.as_str())
                .collect();
            return Err(
                Failure::new(format!("environment {name} has no component {c:?}"))
                    .help(format!("components: {}", names.join(", "))),
            );
        }
    }
    if component.is_none() {
        if let Some(cloud) = &env.cloud {
            for g in &cloud.instances {
                let cluster = crate::providers::cluster::display_context(&env, &g.role);
                let Some(t) = g
                    .user_data
                    .as_deref()
                    .or(env::validate::default_user_data(&g.role))
                else {
                    continue;
                };
                for i in 0..g.count {
                    let text = renderer
                        .user_data(&*snap, t, g, i, &cluster)
                        .map_err(fail)?;
                    outputs.push((
                        format!("user-data instance/{}/{i}", g.name),
                        format!("templates/{t}"),
                        text,
                    ));
                }
            }
        }
    }
    for c in env.addons.iter().chain(&env.apps) {
        if component.is_some_and(|x| x != c.name) {
            continue;
        }
        for m in renderer.manifests(&*snap, c).map_err(fail)? {
            let text = crate::render::to_yaml(&m.object);
            outputs.push((format!("component {}", c.name), m.source, text));
        }
    }
    if ctx.json() {
        print_json(&RenderDoc {
            schema_version: RENDER_SCHEMA_VERSION,
            env: name,
            commit: commit_json_camel(&snap),
            outputs: outputs
                .iter()
                .map(|(what, source, content)| RenderedDoc {
                    what,
                    source,
                    content,
                })
                .collect(),
        });
    } else {
        crate::outln!("# {}", commit_line(&snap));
        for (what, source, content) in &outputs {
            crate::outln!("---\n# {what}\n# Source: {source}");
            crate::out!("{content}");
            if !content.ends_with('\n') {
                crate::outln!();
            }
        }
    }
    Ok(ExitCode::Ok)
}
