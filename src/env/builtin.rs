//! The templates that ship inside the binary: the cloud-init user-data for k3s and the sample
//! add-ons, at the paths they have in this repository (`templates/...`). A repository needs none of
//! them to start with; a file of the same path in the commit overrides the built-in one, file by
//! file. They are versioned with phoenix, so `phoenix --version` is part of what renders them.

/// Every built-in file: its repository path and text.
pub const FILES: &[(&str, &str)] = &[
    (
        "templates/addons/backup-operator/crd.yaml",
        include_str!("../../templates/addons/backup-operator/crd.yaml"),
    ),
    (
        "templates/addons/backup-operator/operator.yaml.j2",
        include_str!("../../templates/addons/backup-operator/operator.yaml.j2"),
    ),
    (
        "templates/addons/backup-operator/values.yaml",
        include_str!("../../templates/addons/backup-operator/values.yaml"),
    ),
    (
        "templates/addons/ingress-nginx/controller.yaml.j2",
        include_str!("../../templates/addons/ingress-nginx/controller.yaml.j2"),
    ),
    (
        "templates/addons/ingress-nginx/namespace.yaml.j2",
        include_str!("../../templates/addons/ingress-nginx/namespace.yaml.j2"),
    ),
    (
        "templates/addons/ingress-nginx/rbac.yaml.j2",
        include_str!("../../templates/addons/ingress-nginx/rbac.yaml.j2"),
    ),
    (
        "templates/addons/ingress-nginx/values.yaml",
        include_str!("../../templates/addons/ingress-nginx/values.yaml"),
    ),
    (
        "templates/cloud-init/_k3s-install.sh.j2",
        include_str!("../../templates/cloud-init/_k3s-install.sh.j2"),
    ),
    (
        "templates/cloud-init/_mount-volumes.sh.j2",
        include_str!("../../templates/cloud-init/_mount-volumes.sh.j2"),
    ),
    (
        "templates/cloud-init/k3s-agent.yaml.j2",
        include_str!("../../templates/cloud-init/k3s-agent.yaml.j2"),
    ),
    (
        "templates/cloud-init/k3s-server.yaml.j2",
        include_str!("../../templates/cloud-init/k3s-server.yaml.j2"),
    ),
    (
        "templates/values.yaml",
        include_str!("../../templates/values.yaml"),
    ),
];

/// The built-in text at `path`, if there is one.
pub fn get(path: &str) -> Option<&'static str> {
    FILES
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, text)| *text)
}

/// The built-in files under `dir` (a repository path without a trailing slash).
pub fn under(dir: &str) -> impl Iterator<Item = &'static str> + '_ {
    let prefix = format!("{}/", dir.trim_end_matches('/'));
    FILES
        .iter()
        .map(|(p, _)| *p)
        .filter(move |p| p.starts_with(&prefix))
}

#[cfg(test)]
mod tests {
    /// Every file under templates/ is built in, and nothing else: a template added to the
    /// repository without being listed here fails this test.
    #[test]
    fn every_template_of_the_repository_is_built_in() {
        fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, root, out);
                } else {
                    out.push(
                        path.strip_prefix(root)
                            .unwrap()
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut on_disk = Vec::new();
        walk(&root.join("templates"), root, &mut on_disk);
        on_disk.sort();
        let built_in: Vec<String> = super::FILES.iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(built_in, on_disk);
        for (path, text) in super::FILES {
            assert_eq!(
                std::fs::read_to_string(root.join(path)).unwrap(),
                *text,
                "{path}"
            );
        }
    }
}
