//! Unified diffs of Kubernetes objects: live and desired JSON rendered as YAML, compared line by
//! line (longest common subsequence), shown as `--- live` / `+++ git` hunks like `kubectl diff`.

use serde_json::Value;

use crate::render::to_yaml;

/// Lines of context around each change, as in `diff -u`.
pub const CONTEXT: usize = 3;

/// Above this many cells (changed lines on one side × on the other) the exact LCS table is not
/// built; the changed block is shown as removed then added. Objects are far smaller in
/// practice; the cap keeps a pathological object from costing seconds or gigabytes.
const MAX_TABLE_CELLS: usize = 4_000_000;

const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const CYAN: &str = "\x1b[36m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

/// A unified diff from `live` to `desired` (what applying Git would change), both already
/// stripped of noise (status, managedFields, server defaults). `None` on a side means the
/// object does not exist there. Empty string when the YAML forms are equal.
pub fn unified_diff(
    resource: &str,
    desired: Option<&Value>,
    live: Option<&Value>,
    color: bool,
) -> String {
    let live_text = live.map(to_yaml).unwrap_or_default();
    let desired_text = desired.map(to_yaml).unwrap_or_default();
    unified_diff_text(
        &format!("live {resource}"),
        &format!("git {resource}"),
        &live_text,
        &desired_text,
        color,
    )
}

/// A unified diff of two texts with [`CONTEXT`] lines of context. Empty string when equal.
pub fn unified_diff_text(
    old_label: &str,
    new_label: &str,
    old: &str,
    new: &str,
    color: bool,
) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let ops = diff_lines(&a, &b);
    if ops.iter().all(|op| matches!(op, Op::Equal(..))) {
        return String::new();
    }
    let mut out = String::new();
    out.push_str(&format!("--- {old_label}\n+++ {new_label}\n"));
    for hunk in hunks(&ops, CONTEXT) {
        let (old_start, old_len, new_start, new_len) = hunk_range(&ops, hunk.clone());
        out.push_str(&format!(
            "@@ -{} +{} @@\n",
            range(old_start, old_len),
            range(new_start, new_len)
        ));
        for op in &ops[hunk] {
            match *op {
                Op::Equal(i, _) => push_line(&mut out, ' ', a[i]),
                Op::Delete(i) => push_line(&mut out, '-', a[i]),
                Op::Insert(j) => push_line(&mut out, '+', b[j]),
            }
        }
    }
    if color {
        colorize(&out)
    } else {
        out
    }
}

/// Adds terminal colours to a plain unified diff (headers bold, hunk lines cyan, removals red,
/// additions green). Used by the human output on diffs stored plain in the report.
pub fn colorize(plain: &str) -> String {
    let mut out = String::with_capacity(plain.len() + plain.len() / 4);
    for line in plain.split_inclusive('\n') {
        let (body, newline) = match line.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (line, ""),
        };
        let code = if body.starts_with("--- ") || body.starts_with("+++ ") {
            Some(BOLD)
        } else if body.starts_with("@@") {
            Some(CYAN)
        } else if body.starts_with('-') {
            Some(RED)
        } else if body.starts_with('+') {
            Some(GREEN)
        } else {
            None
        };
        match code {
            Some(code) => {
                out.push_str(code);
                out.push_str(body);
                out.push_str(RESET);
            }
            None => out.push_str(body),
        }
        out.push_str(newline);
    }
    out
}

fn push_line(out: &mut String, prefix: char, line: &str) {
    out.push(prefix);
    out.push_str(line);
    out.push('\n');
}

/// `start,len` as in `diff -u`: a 1-based start, or the line before when the side is empty.
fn range(start: usize, len: usize) -> String {
    if len == 0 {
        format!("{start},0")
    } else if len == 1 {
        format!("{}", start + 1)
    } else {
        format!("{},{len}", start + 1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// Line `i` of old equals line `j` of new.
    Equal(usize, usize),
    Delete(usize),
    Insert(usize),
}

/// An edit script from `a` to `b`: common prefix and suffix first, LCS on what is left.
fn diff_lines(a: &[&str], b: &[&str]) -> Vec<Op> {
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (a_mid, b_mid) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    let mut ops: Vec<Op> = (0..prefix).map(|i| Op::Equal(i, i)).collect();
    middle(a_mid, b_mid, prefix, prefix, &mut ops);
    let (a_end, b_end) = (a.len() - suffix, b.len() - suffix);
    ops.extend((0..suffix).map(|k| Op::Equal(a_end + k, b_end + k)));
    ops
}

fn middle(a: &[&str], b: &[&str], a_off: usize, b_off: usize, ops: &mut Vec<Op>) {
    let (n, m) = (a.len(), b.len());
    if n.saturating_mul(m) > MAX_TABLE_CELLS || n == 0 || m == 0 {
        ops.extend((0..n).map(|i| Op::Delete(a_off + i)));
        ops.extend((0..m).map(|j| Op::Insert(b_off + j)));
        return;
    }
    // lcs[i][j]: length of the LCS of a[i..] and b[j..], row-major with stride m + 1.
    let stride = m + 1;
    let mut lcs = vec![0u32; (n + 1) * stride];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i * stride + j] = if a[i] == b[j] {
                lcs[(i + 1) * stride + j + 1] + 1
            } else {
                lcs[(i + 1) * stride + j].max(lcs[i * stride + j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    while i < n && j < m {
        if a[i] == b[j] {
            ops.push(Op::Equal(a_off + i, b_off + j));
            i += 1;
            j += 1;
        } else if lcs[(i + 1) * stride + j] >= lcs[i * stride + j + 1] {
            // Removals before additions within a change, as diff(1) prints them.
            ops.push(Op::Delete(a_off + i));
            i += 1;
        } else {
            ops.push(Op::Insert(b_off + j));
            j += 1;
        }
    }
    ops.extend((i..n).map(|i| Op::Delete(a_off + i)));
    ops.extend((j..m).map(|j| Op::Insert(b_off + j)));
}

/// Index ranges into `ops` of each hunk: changes with `context` equal lines around them, merged
/// when their contexts touch.
fn hunks(ops: &[Op], context: usize) -> Vec<std::ops::Range<usize>> {
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    for (k, op) in ops.iter().enumerate() {
        if matches!(op, Op::Equal(..)) {
            continue;
        }
        let start = k.saturating_sub(context);
        let end = (k + 1 + context).min(ops.len());
        match out.last_mut() {
            Some(last) if start <= last.end => last.end = last.end.max(end),
            _ => out.push(start..end),
        }
    }
    out
}

/// (old start, old length, new start, new length) of `ops[hunk]`, starts 0-based: how many
/// lines of each side come before the hunk, and how many of each it covers.
fn hunk_range(ops: &[Op], hunk: std::ops::Range<usize>) -> (usize, usize, usize, usize) {
    let count = |ops: &[Op]| {
        ops.iter().fold((0, 0), |(old, new), op| match op {
            Op::Equal(..) => (old + 1, new + 1),
            Op::Delete(_) => (old + 1, new),
            Op::Insert(_) => (old, new + 1),
        })
    };
    let (old_start, new_start) = count(&ops[..hunk.start]);
    let (old_len, new_len) = count(&ops[hunk]);
    (old_start, old_len, new_start, new_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn equal_objects_give_an_empty_diff() {
        let v = json!({"spec": {"replicas": 2}});
        assert_eq!(
            unified_diff("Deployment/web/api", Some(&v), Some(&v), false),
            ""
        );
    }

    #[test]
    fn a_changed_scalar_in_the_middle() {
        let desired = json!({"metadata": {"name": "api", "namespace": "web"},
            "spec": {"replicas": 2, "paused": false, "minReadySeconds": 5, "revisionHistoryLimit": 3, "progressDeadlineSeconds": 60}});
        let mut live = desired.clone();
        live["spec"]["replicas"] = json!(5);
        let got = unified_diff("Deployment/web/api", Some(&desired), Some(&live), false);
        // serde_json maps are ordered by key, so the YAML is too.
        let want = "\
--- live Deployment/web/api
+++ git Deployment/web/api
@@ -5,5 +5,5 @@
   minReadySeconds: 5
   paused: false
   progressDeadlineSeconds: 60
-  replicas: 5
+  replicas: 2
   revisionHistoryLimit: 3
";
        assert_eq!(got, want);
    }

    #[test]
    fn a_missing_object_is_all_additions() {
        let desired = json!({"kind": "ConfigMap", "data": {"a": "1"}});
        let got = unified_diff("ConfigMap/web/cfg", Some(&desired), None, false);
        let want = "\
--- live ConfigMap/web/cfg
+++ git ConfigMap/web/cfg
@@ -0,0 +1,3 @@
+data:
+  a: \"1\"
+kind: ConfigMap
";
        assert_eq!(got, want, "{got}");
    }

    #[test]
    fn an_extra_object_is_all_removals() {
        let live = json!({"kind": "ConfigMap"});
        let got = unified_diff("ConfigMap/web/old", None, Some(&live), false);
        assert_eq!(
            got,
            "--- live ConfigMap/web/old\n+++ git ConfigMap/web/old\n@@ -1 +0,0 @@\n-kind: ConfigMap\n"
        );
    }

    #[test]
    fn distant_changes_make_two_hunks() {
        let old: String = (1..=20).map(|i| format!("l{i}\n")).collect();
        let new = old.replace("l2\n", "L2\n").replace("l19\n", "L19\n");
        let got = unified_diff_text("a", "b", &old, &new, false);
        let want = "\
--- a
+++ b
@@ -1,5 +1,5 @@
 l1
-l2
+L2
 l3
 l4
 l5
@@ -16,5 +16,5 @@
 l16
 l17
 l18
-l19
+L19
 l20
";
        assert_eq!(got, want);
    }

    #[test]
    fn near_changes_share_a_hunk() {
        let old = "a\nb\nc\nd\ne\nf\ng\n";
        let new = "a\nB\nc\nd\ne\nF\ng\n";
        let got = unified_diff_text("x", "y", old, new, false);
        assert_eq!(got.matches("@@").count(), 2, "one hunk header: {got}");
        assert!(got.contains("@@ -1,7 +1,7 @@\n"), "{got}");
    }

    #[test]
    fn an_insertion_keeps_the_common_lines() {
        let got = unified_diff_text("x", "y", "a\nc\n", "a\nb\nc\n", false);
        assert_eq!(got, "--- x\n+++ y\n@@ -1,2 +1,3 @@\n a\n+b\n c\n");
    }

    #[test]
    fn a_reordered_middle_uses_the_longest_common_subsequence() {
        let got = unified_diff_text("x", "y", "a\nb\nc\nd\n", "a\nc\nb\nd\n", false);
        // One line moves; the LCS keeps three of four lines.
        assert_eq!(
            got.lines().filter(|l| l.starts_with(' ')).count(),
            3,
            "{got}"
        );
        assert_eq!(
            got.lines()
                .filter(|l| l.starts_with('-') && !l.starts_with("---"))
                .count(),
            1
        );
    }

    #[test]
    fn colour_wraps_each_kind_of_line() {
        let got = unified_diff_text("x", "y", "a\n", "b\n", true);
        assert_eq!(
            got,
            "\x1b[1m--- x\x1b[0m\n\x1b[1m+++ y\x1b[0m\n\x1b[36m@@ -1 +1 @@\x1b[0m\n\x1b[31m-a\x1b[0m\n\x1b[32m+b\x1b[0m\n"
        );
        assert_eq!(
            colorize(&unified_diff_text("x", "y", "a\n", "b\n", false)),
            got
        );
    }

    #[test]
    fn no_colour_means_no_escape_codes() {
        let got = unified_diff_text("x", "y", "a\n", "b\n", false);
        assert!(!got.contains('\x1b'));
    }

    #[test]
    fn a_huge_change_falls_back_without_a_table() {
        let old: String = (0..3000).map(|i| format!("o{i}\n")).collect();
        let new: String = (0..3000).map(|i| format!("n{i}\n")).collect();
        let got = unified_diff_text("x", "y", &old, &new, false);
        assert!(got.starts_with("--- x\n+++ y\n@@ -1,3000 +1,3000 @@\n-o0\n"));
        assert_eq!(got.lines().count(), 3 + 6000);
    }
}
