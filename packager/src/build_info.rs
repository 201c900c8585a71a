//! What the image records about the build: versions, the base image checksum and the build
//! time, filled from `build-manifest.json` (the leaf crate `kib-manifest`, not the builder)
//! by [`crate::inputs::build_info_of`].

/// The facts about a build that go into the image's labels and its fixed timestamps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildInfo {
    /// Kubernetes version with a `v`, e.g. `v1.37.1`.
    pub kubernetes_version: Option<String>,
    /// Rocky Linux version, e.g. `10.1`.
    pub rocky_version: Option<String>,
    /// sha256 (64 hex digits, no `sha256:`) of the base cloud image.
    pub base_image_sha256: Option<String>,
    /// When the image was built, in seconds since the epoch.
    pub build_epoch: Option<u64>,
}

/// The fixed time for mtimes and `created`: `SOURCE_DATE_EPOCH` if set and valid, else the
/// build time, else 0 (the epoch), so that nothing depends on the clock.
pub fn source_date_epoch(info: Option<&BuildInfo>) -> u64 {
    epoch_from(std::env::var("SOURCE_DATE_EPOCH").ok().as_deref(), info)
}

/// [`source_date_epoch`] with the variable's value passed in.
fn epoch_from(source_date_epoch: Option<&str>, info: Option<&BuildInfo>) -> u64 {
    source_date_epoch
        .and_then(|s| s.trim().parse().ok())
        .or_else(|| info.and_then(|i| i.build_epoch))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_date_epoch_then_the_build_time_then_zero() {
        let info = BuildInfo {
            build_epoch: Some(1_795_773_600),
            ..BuildInfo::default()
        };
        assert_eq!(epoch_from(Some("42\n"), Some(&info)), 42);
        assert_eq!(epoch_from(Some("soon"), Some(&info)), 1_795_773_600);
        assert_eq!(epoch_from(None, Some(&info)), 1_795_773_600);
        assert_eq!(epoch_from(None, Some(&BuildInfo::default())), 0);
        assert_eq!(epoch_from(None, None), 0);
    }
}
