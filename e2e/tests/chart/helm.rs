//! helm, rendering, and reading what was rendered: objects by kind and name, RBAC rules, README commands.

use super::*;

pub fn chart_dir() -> PathBuf {
    workspace::root().join("charts/macvtap-operator")
}

pub fn chart_arg() -> String {
    chart_dir().to_str().expect("utf-8 path").to_string()
}

/// Runs helm in the repository root (README commands use repo-relative paths). Err carries helm's output.
pub fn helm(args: &[&str], kubeconfig: Option<&Path>) -> Result<String, String> {
    let mut cmd = Command::new(tools::require("helm"));
    cmd.args(args).current_dir(workspace::root());
    if let Some(k) = kubeconfig {
        cmd.env("KUBECONFIG", k);
    }
    let out = cmd.output().expect("running helm");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "helm {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            stdout
        ))
    }
}

pub fn parse_docs(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .unwrap_or_else(|e| panic!("helm output is not YAML: {e}\n{yaml}"))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// `helm template rel <chart> -n macvtap-system <extra>`, as objects.
pub fn render(extra: &[&str]) -> Result<Vec<Value>, String> {
    let chart = chart_arg();
    let mut args = vec!["template", "rel", &chart, "--namespace", "macvtap-system"];
    args.extend_from_slice(extra);
    helm(&args, None).map(|out| parse_docs(&out))
}

pub fn render_ok(extra: &[&str]) -> Vec<Value> {
    render(extra).unwrap_or_else(|e| panic!("{e}"))
}

pub fn kind_names(objs: &[Value]) -> BTreeSet<String> {
    objs.iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

pub fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in {:?}", kind_names(objs)))
}

pub fn find_by_component<'a>(objs: &'a [Value], kind: &str, component: &str) -> &'a Value {
    objs.iter()
        .find(|o| {
            o["kind"] == kind && o["metadata"]["labels"]["app.kubernetes.io/component"] == component
        })
        .unwrap_or_else(|| {
            panic!(
                "no {kind} of component {component} in {:?}",
                kind_names(objs)
            )
        })
}

pub fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("not a string: {s}"))
                .to_string()
        })
        .collect()
}

pub fn env_names(container: &Value) -> Vec<String> {
    container["env"].as_array().map_or_else(Vec::new, |env| {
        env.iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect()
    })
}

/// The rules of a (Cluster)Role as (apiGroups, resources, verbs, resourceNames) sets.
pub type Rule = (
    BTreeSet<String>,
    BTreeSet<String>,
    BTreeSet<String>,
    BTreeSet<String>,
);

pub fn rules(role: &Value) -> Vec<Rule> {
    let set = |v: &Value| -> BTreeSet<String> {
        v.as_array().map_or_else(BTreeSet::new, |a| {
            a.iter().map(|s| s.as_str().unwrap().to_string()).collect()
        })
    };
    role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                set(&r["apiGroups"]),
                set(&r["resources"]),
                set(&r["verbs"]),
                set(&r["resourceNames"]),
            )
        })
        .collect()
}

/// Every (group, resource, verb) a role grants, ignoring resourceNames.
pub fn grants(role: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for (groups, resources, verbs, _) in rules(role) {
        for g in &groups {
            for r in &resources {
                for v in &verbs {
                    out.insert((g.clone(), r.clone(), v.clone()));
                }
            }
        }
    }
    out
}

pub fn grant(g: &str, r: &str, verbs: &[&str]) -> Vec<(String, String, String)> {
    verbs
        .iter()
        .map(|v| (g.to_string(), r.to_string(), v.to_string()))
        .collect()
}

/// The lines of a README code block between `<!-- <tag>:begin -->` and `<!-- <tag>:end -->`.
pub fn readme_commands(tag: &str) -> Vec<String> {
    let readme = fs::read_to_string(chart_dir().join("README.md")).expect("chart README.md");
    let begin = format!("<!-- {tag}:begin -->");
    let end = format!("<!-- {tag}:end -->");
    let start = readme
        .find(&begin)
        .unwrap_or_else(|| panic!("README has no {begin}"));
    let stop = readme[start..]
        .find(&end)
        .unwrap_or_else(|| panic!("README has no {end}"))
        + start;
    let cmds: Vec<String> = readme[start + begin.len()..stop]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("```"))
        .map(str::to_string)
        .collect();
    assert!(!cmds.is_empty(), "README {tag} block is empty");
    cmds
}

/// Runs a README command line (a plain `helm ...` line: no quoting or shell syntax, checked) with our helm.
pub fn run_readme_command(line: &str, kubeconfig: &Path) -> String {
    assert!(
        !line.contains(['"', '\'', '\\', '$', '|', ';', '&']),
        "README command needs a shell; keep install commands plain: {line}"
    );
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        words[0], "helm",
        "README install commands are helm commands: {line}"
    );
    helm(&words[1..], Some(kubeconfig)).unwrap_or_else(|e| panic!("README command `{line}`: {e}"))
}
