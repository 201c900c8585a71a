//! The tag scheme.
//!
//! Default: an immutable tag from the repository's git tag when `HEAD` is tagged, else
//! `<k8s-version>-g<short-sha>`; for tagged builds also the moving tags `<k8s-version>`
//! (`v1.37.1`) and `<k8s-minor>` (`v1.37`). Templates use `{git_tag}`, `{k8s_version}`,
//! `{k8s_minor}` and `{short_sha}`.

use std::path::{Path, PathBuf};
use std::process::Command;

use kib_manifest::Hint;

/// What the templates can refer to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagVars {
    /// The git tag on `HEAD`, if any.
    pub git_tag: Option<String>,
    /// The abbreviated commit of `HEAD`.
    pub short_sha: Option<String>,
    /// The Kubernetes version, e.g. `v1.37.1`.
    pub kubernetes_version: Option<String>,
}

/// Which tags an image gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagScheme {
    /// The immutable tag when `HEAD` is tagged.
    pub tagged: String,
    /// The immutable tag otherwise.
    pub untagged: String,
    /// Moving tags, set for tagged builds only.
    pub moving: Vec<String>,
}

impl Default for TagScheme {
    fn default() -> Self {
        Self {
            tagged: "{git_tag}".into(),
            untagged: "{k8s_version}-g{short_sha}".into(),
            moving: vec!["{k8s_version}".into(), "{k8s_minor}".into()],
        }
    }
}

/// The tags to set, in order: the immutable one first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tags {
    /// Must not already point at another image.
    pub immutable: String,
    /// Moved to the new image.
    pub moving: Vec<String>,
}

impl Tags {
    /// Every tag, immutable first.
    pub fn all(&self) -> Vec<String> {
        std::iter::once(self.immutable.clone())
            .chain(self.moving.iter().cloned())
            .collect()
    }
}

/// The tag scheme could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum TagError {
    /// A template names a value that is not known.
    #[error("The tag template `{template}` needs `{{{variable}}}`, which is not known")]
    MissingVariable {
        /// The template.
        template: String,
        /// The variable.
        variable: &'static str,
    },
    /// A template names a variable that does not exist.
    #[error("The tag template `{template}` has an unknown placeholder")]
    UnknownVariable {
        /// The template.
        template: String,
    },
    /// The rendered tag is not a valid OCI tag.
    #[error(
        "`{tag}` is not a valid tag (letters, digits, `_`, `.`, `-`, at most 128, not starting with `.` or `-`)"
    )]
    Invalid {
        /// The tag.
        tag: String,
    },
}

impl Hint for TagError {
    /// What to do about it.
    fn hint(&self) -> Option<String> {
        match self {
            TagError::MissingVariable {
                variable: "k8s_version" | "k8s_minor",
                ..
            } => {
                Some("pass `--kubernetes-version`, or `--manifest` with the build manifest".into())
            }
            TagError::MissingVariable {
                variable: "short_sha" | "git_tag",
                ..
            } => Some(
                "run inside the git checkout (or pass `--git-dir`), or give an explicit `--tag`"
                    .into(),
            ),
            TagError::UnknownVariable { .. } => Some(
                "placeholders are `{git_tag}`, `{k8s_version}`, `{k8s_minor}` and `{short_sha}`"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// `v1.37.1` → `v1.37`.
pub fn kubernetes_minor(version: &str) -> String {
    let mut parts = version.splitn(3, '.');
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) => format!("{major}.{minor}"),
        _ => version.to_owned(),
    }
}

/// Whether `tag` matches the OCI distribution tag grammar `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn is_valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Makes a git tag usable as an OCI tag (`release/v1` → `release-v1`).
pub fn sanitize(tag: &str) -> String {
    tag.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Renders one template.
pub fn render(template: &str, vars: &TagVars) -> Result<String, TagError> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .ok_or_else(|| TagError::UnknownVariable {
                template: template.into(),
            })?;
        let name = &rest[start + 1..start + end];
        let missing = |variable| TagError::MissingVariable {
            template: template.into(),
            variable,
        };
        let value = match name {
            "git_tag" => sanitize(vars.git_tag.as_deref().ok_or_else(|| missing("git_tag"))?),
            "short_sha" => vars.short_sha.clone().ok_or_else(|| missing("short_sha"))?,
            "k8s_version" => vars
                .kubernetes_version
                .clone()
                .ok_or_else(|| missing("k8s_version"))?,
            "k8s_minor" => kubernetes_minor(
                vars.kubernetes_version
                    .as_deref()
                    .ok_or_else(|| missing("k8s_minor"))?,
            ),
            _ => {
                return Err(TagError::UnknownVariable {
                    template: template.into(),
                });
            }
        };
        out.push_str(&value);
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    if !is_valid_tag(&out) {
        return Err(TagError::Invalid { tag: out });
    }
    Ok(out)
}

impl TagScheme {
    /// The tags for these values. Moving tags equal to the immutable one are dropped.
    pub fn tags(&self, vars: &TagVars) -> Result<Tags, TagError> {
        if vars.git_tag.is_some() {
            let immutable = render(&self.tagged, vars)?;
            let mut moving = Vec::new();
            for t in &self.moving {
                let t = render(t, vars)?;
                if t != immutable && !moving.contains(&t) {
                    moving.push(t);
                }
            }
            Ok(Tags { immutable, moving })
        } else {
            Ok(Tags {
                immutable: render(&self.untagged, vars)?,
                moving: Vec::new(),
            })
        }
    }
}

/// Reading git state failed.
#[derive(Debug, thiserror::Error)]
#[error("Failed to run `git {args}` in `{}`", dir.display())]
pub struct GitError {
    /// The working directory.
    pub dir: PathBuf,
    /// The git arguments.
    pub args: String,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// What git says about `HEAD`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GitInfo {
    /// The tag on `HEAD` (exact match), if any.
    pub tag: Option<String>,
    /// The abbreviated commit (12 hex digits).
    pub short_sha: Option<String>,
    /// The full commit.
    pub commit: Option<String>,
}

/// Reads `HEAD`'s tag and commit with the `git` command in `dir`. Outside a git repository
/// every field is `None`.
pub fn git_info(dir: &Path) -> Result<GitInfo, GitError> {
    let run = |args: &[&str]| -> Result<Option<String>, GitError> {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|source| GitError {
                dir: dir.to_path_buf(),
                args: args.join(" "),
                source,
            })?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Ok((out.status.success() && !text.is_empty()).then_some(text))
    };
    let commit = run(&["rev-parse", "HEAD"])?;
    if commit.is_none() {
        return Ok(GitInfo::default());
    }
    let short_sha = commit.as_ref().map(|c| c[..12.min(c.len())].to_owned());
    let tag = run(&["describe", "--tags", "--exact-match", "HEAD"])?;
    Ok(GitInfo {
        tag,
        short_sha,
        commit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(tag: Option<&str>) -> TagVars {
        TagVars {
            git_tag: tag.map(Into::into),
            short_sha: Some("abc123def456".into()),
            kubernetes_version: Some("v1.37.1".into()),
        }
    }

    #[test]
    fn default_scheme() {
        let s = TagScheme::default();
        let t = s.tags(&vars(Some("v0.3.0"))).unwrap();
        assert_eq!(t.all(), ["v0.3.0", "v1.37.1", "v1.37"]);
        let t = s.tags(&vars(None)).unwrap();
        assert_eq!(t.all(), ["v1.37.1-gabc123def456"]);
    }

    #[test]
    fn templates_and_validation() {
        assert_eq!(render("k8s-{k8s_minor}", &vars(None)).unwrap(), "k8s-v1.37");
        assert_eq!(
            render("{git_tag}", &vars(Some("release/1"))).unwrap(),
            "release-1"
        );
        assert!(matches!(
            render("{nope}", &vars(None)),
            Err(TagError::UnknownVariable { .. })
        ));
        assert!(matches!(
            render("{git_tag}", &vars(None)),
            Err(TagError::MissingVariable {
                variable: "git_tag",
                ..
            })
        ));
        assert!(matches!(
            render("-x", &vars(None)),
            Err(TagError::Invalid { .. })
        ));
        assert!(is_valid_tag("v1.37.1-gabc"));
        assert!(!is_valid_tag(&"a".repeat(129)));
    }
}
