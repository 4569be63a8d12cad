//! Image references as containerd and the kubelet normalise them, and the path a mirror is asked for.

use std::fmt;

use super::{Error, Result};

/// A fully qualified image reference (`registry/repository:tag`), Docker's short names normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    pub tag: String,
}

impl ImageRef {
    /// Parses `name[:tag]` the way containerd and the kubelet normalise it: a first component without `.` or `:`
    /// (and not `localhost`) is a Docker Hub repository, one-component Hub names live under `library/`, the tag
    /// defaults to `latest`. Digest references cannot be pushed by tag and are refused.
    pub fn parse(reference: &str) -> Result<Self> {
        let bad = |why| Error::Reference(reference.to_string(), why);
        if reference.contains('@') {
            return Err(bad("digest references are not supported; use a tag"));
        }
        let (name, tag) = match reference.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, t),
            _ => (reference, "latest"),
        };
        if name.is_empty() || tag.is_empty() {
            return Err(bad("empty name or tag"));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" {
            "docker.io".to_string()
        } else {
            registry
        };
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.is_empty() || repository.split('/').any(str::is_empty) {
            return Err(bad("empty path component"));
        }
        Ok(Self {
            registry,
            repository,
            tag: tag.to_string(),
        })
    }

    /// `repository:tag`: the path under which a mirror serves this image.
    pub fn mirror_path(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.registry, self.repository, self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(r: &str) -> (String, String) {
        let i = ImageRef::parse(r).unwrap();
        (i.registry.clone(), i.mirror_path())
    }

    #[test]
    fn references_map_to_the_path_a_mirror_is_asked_for() {
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(parsed("busybox"), s("docker.io", "library/busybox:latest"));
        assert_eq!(
            parsed("docker.io/library/busybox:latest"),
            s("docker.io", "library/busybox:latest")
        );
        assert_eq!(
            parsed("index.docker.io/busybox:1.36"),
            s("docker.io", "library/busybox:1.36")
        );
        assert_eq!(parsed("user/app:v1"), s("docker.io", "user/app:v1"));
        assert_eq!(
            parsed("ghcr.io/macvtap-operator/macvtap-agent:0.1.0"),
            s("ghcr.io", "macvtap-operator/macvtap-agent:0.1.0")
        );
        assert_eq!(
            parsed("registry.k8s.io/pause:3.10"),
            s("registry.k8s.io", "pause:3.10")
        );
        assert_eq!(
            parsed("localhost:5000/a/b"),
            s("localhost:5000", "a/b:latest")
        );
        assert_eq!(parsed("localhost/a"), s("localhost", "a:latest"));
        for bad in ["", ":tag", "busybox@sha256:00", "ghcr.io/", "a//b:1"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn display_is_the_fully_qualified_reference() {
        assert_eq!(
            ImageRef::parse("busybox").unwrap().to_string(),
            "docker.io/library/busybox:latest"
        );
    }
}
