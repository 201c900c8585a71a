//! Choosing the accelerator: KVM when it works, TCG otherwise, and why.
//!
//! `Auto` picks KVM only when the KVM device opens read-write **and** the host is not a PVM host
//! (`/sys/module/kvm_pvm` exists): under PVM a stock guest kernel hangs right after
//! "Probing EDD", with no error anywhere. Otherwise it picks TCG and says why in
//! [`AccelChoice::reason`], which the caller should show loudly (TCG is ~10x slower).
//! The probed paths live in [`HostProbe`] so tests (and odd hosts) can point elsewhere.

use std::path::PathBuf;

use kib_manifest::Hint;

/// What the user asked for (`kib.toml`'s `vm.accel`, `--accel`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AccelRequest {
    /// KVM when usable, else TCG.
    #[default]
    Auto,
    /// KVM or an error.
    Kvm,
    /// TCG (software emulation) always.
    Tcg,
}

impl AccelRequest {
    /// The word used in `kib.toml` and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            AccelRequest::Auto => "auto",
            AccelRequest::Kvm => "kvm",
            AccelRequest::Tcg => "tcg",
        }
    }
}

impl std::fmt::Display for AccelRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AccelRequest {
    type Err = crate::UnknownChoice;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(AccelRequest::Auto),
            "kvm" => Ok(AccelRequest::Kvm),
            "tcg" => Ok(AccelRequest::Tcg),
            _ => Err(crate::UnknownChoice {
                value: s.to_owned(),
                expected: "`auto`, `kvm`, `tcg`",
            }),
        }
    }
}

/// The accelerator actually used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation (multi-threaded TCG).
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// The decision and its reason (for the user: "using TCG because …").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    /// The accelerator to use.
    pub accel: Accel,
    /// Why; always set, e.g. "`/dev/kvm` is usable" or "`/dev/kvm` cannot be opened: …".
    pub reason: String,
}

/// KVM was requested explicitly and cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AccelError {
    /// The KVM device does not open read-write.
    #[error("KVM was requested but `{path}` cannot be opened read-write")]
    KvmUnavailable {
        /// The KVM device path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The host runs KVM as PVM, where stock guest kernels hang at boot.
    #[error(
        "KVM was requested but this is a PVM host (`{module}` exists), where guests hang at boot"
    )]
    PvmHost {
        /// The module path that revealed PVM.
        module: PathBuf,
    },
}

impl Hint for AccelError {
    /// A suggestion for the user.
    fn hint(&self) -> Option<String> {
        Some(match self {
            AccelError::KvmUnavailable { path, source }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                format!(
                    "add your user to the `kvm` group (`sudo usermod -aG kvm $USER`, then log in again), or check the permissions of `{}`; or use `--accel tcg`",
                    path.display()
                )
            }
            AccelError::KvmUnavailable { .. } => {
                "enable virtualisation (VT-x/AMD-V, nested virtualisation in a VM) and load the `kvm` module; or use `--accel tcg`".to_owned()
            }
            AccelError::PvmHost { .. } => "use `--accel tcg` (or `--accel auto`) on this host".to_owned(),
        })
    }
}

/// What [`detect_with`] looks at.
pub trait Probe {
    /// Opens the KVM device read-write (and closes it).
    fn open_kvm(&self) -> Result<(), std::io::Error>;
    /// Whether the PVM flavour of KVM is loaded.
    fn is_pvm_host(&self) -> bool;
    /// The KVM device path (for messages).
    fn kvm_path(&self) -> PathBuf;
    /// The PVM module path (for messages).
    fn pvm_path(&self) -> PathBuf;
}

/// The real host, with configurable paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostProbe {
    /// The KVM device, default `/dev/kvm`.
    pub kvm_device: PathBuf,
    /// The PVM module directory, default `/sys/module/kvm_pvm`.
    pub pvm_module: PathBuf,
}

impl Default for HostProbe {
    fn default() -> Self {
        Self {
            kvm_device: "/dev/kvm".into(),
            pvm_module: "/sys/module/kvm_pvm".into(),
        }
    }
}

impl Probe for HostProbe {
    fn open_kvm(&self) -> Result<(), std::io::Error> {
        fs_err::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.kvm_device)
            .map(drop)
    }
    fn is_pvm_host(&self) -> bool {
        self.pvm_module.exists()
    }
    fn kvm_path(&self) -> PathBuf {
        self.kvm_device.clone()
    }
    fn pvm_path(&self) -> PathBuf {
        self.pvm_module.clone()
    }
}

/// Decides on the real host (see [`detect_with`]).
pub fn detect(request: AccelRequest) -> Result<AccelChoice, AccelError> {
    detect_with(request, &HostProbe::default())
}

/// Decides for `Auto` on the real host; never fails (see [`detect_with`]).
pub fn detect_auto() -> AccelChoice {
    match detect(AccelRequest::Auto) {
        Ok(choice) => choice,
        // Unreachable (only an explicit `Kvm` request fails), but TCG always works.
        Err(e) => AccelChoice {
            accel: Accel::Tcg,
            reason: e.to_string(),
        },
    }
}

/// Decides with an injectable probe. Only an explicit `Kvm` request can fail.
pub fn detect_with(request: AccelRequest, probe: &impl Probe) -> Result<AccelChoice, AccelError> {
    let tcg = |reason: String| {
        Ok(AccelChoice {
            accel: Accel::Tcg,
            reason,
        })
    };
    if request == AccelRequest::Tcg {
        return tcg("TCG was requested".to_owned());
    }
    let kvm = probe.open_kvm();
    let pvm = probe.is_pvm_host();
    match (request, kvm, pvm) {
        (AccelRequest::Kvm, Err(source), _) => Err(AccelError::KvmUnavailable {
            path: probe.kvm_path(),
            source,
        }),
        (AccelRequest::Kvm, Ok(()), true) => Err(AccelError::PvmHost {
            module: probe.pvm_path(),
        }),
        (_, Ok(()), false) => Ok(AccelChoice {
            accel: Accel::Kvm,
            reason: format!("`{}` is usable", probe.kvm_path().display()),
        }),
        (_, Err(e), _) => tcg(format!(
            "`{}` cannot be opened read-write ({e}); using TCG software emulation, which is much slower",
            probe.kvm_path().display()
        )),
        (_, Ok(()), true) => tcg(format!(
            "this is a PVM host (`{}` exists), where stock guest kernels hang at boot; using TCG software emulation, which is much slower",
            probe.pvm_path().display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;

    struct Fake {
        kvm: Option<ErrorKind>,
        pvm: bool,
    }
    impl Probe for Fake {
        fn open_kvm(&self) -> Result<(), std::io::Error> {
            self.kvm.map_or(Ok(()), |k| Err(k.into()))
        }
        fn is_pvm_host(&self) -> bool {
            self.pvm
        }
        fn kvm_path(&self) -> PathBuf {
            "/dev/kvm".into()
        }
        fn pvm_path(&self) -> PathBuf {
            "/sys/module/kvm_pvm".into()
        }
    }

    #[test]
    fn auto_uses_kvm_only_when_usable_and_not_pvm() {
        let c = detect_with(
            AccelRequest::Auto,
            &Fake {
                kvm: None,
                pvm: false,
            },
        )
        .unwrap();
        assert_eq!(c.accel, Accel::Kvm);
        let c = detect_with(
            AccelRequest::Auto,
            &Fake {
                kvm: None,
                pvm: true,
            },
        )
        .unwrap();
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.reason.contains("PVM"), "{}", c.reason);
        let c = detect_with(
            AccelRequest::Auto,
            &Fake {
                kvm: Some(ErrorKind::PermissionDenied),
                pvm: false,
            },
        )
        .unwrap();
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.reason.contains("/dev/kvm"), "{}", c.reason);
        let c = detect_with(
            AccelRequest::Auto,
            &Fake {
                kvm: Some(ErrorKind::NotFound),
                pvm: false,
            },
        )
        .unwrap();
        assert_eq!(c.accel, Accel::Tcg);
    }

    #[test]
    fn explicit_kvm_fails_with_hints() {
        let e = detect_with(
            AccelRequest::Kvm,
            &Fake {
                kvm: Some(ErrorKind::PermissionDenied),
                pvm: false,
            },
        )
        .unwrap_err();
        assert!(matches!(e, AccelError::KvmUnavailable { .. }));
        assert!(e.hint().unwrap().contains("`kvm` group"));
        let e = detect_with(
            AccelRequest::Kvm,
            &Fake {
                kvm: None,
                pvm: true,
            },
        )
        .unwrap_err();
        assert!(matches!(e, AccelError::PvmHost { .. }));
        assert!(e.hint().unwrap().contains("--accel tcg"));
        let c = detect_with(
            AccelRequest::Kvm,
            &Fake {
                kvm: None,
                pvm: false,
            },
        )
        .unwrap();
        assert_eq!(c.accel, Accel::Kvm);
    }

    #[test]
    fn explicit_tcg_never_probes() {
        struct Panics;
        impl Probe for Panics {
            fn open_kvm(&self) -> Result<(), std::io::Error> {
                panic!("probed")
            }
            fn is_pvm_host(&self) -> bool {
                panic!("probed")
            }
            fn kvm_path(&self) -> PathBuf {
                PathBuf::new()
            }
            fn pvm_path(&self) -> PathBuf {
                PathBuf::new()
            }
        }
        assert_eq!(
            detect_with(AccelRequest::Tcg, &Panics).unwrap().accel,
            Accel::Tcg
        );
    }

    #[test]
    fn host_probe_paths_are_configurable() {
        let dir = tempfile::tempdir().unwrap();
        let probe = HostProbe {
            kvm_device: dir.path().join("kvm"),
            pvm_module: dir.path().join("kvm_pvm"),
        };
        let c = detect_with(AccelRequest::Auto, &probe).unwrap();
        assert_eq!(c.accel, Accel::Tcg);
        fs_err::write(&probe.kvm_device, "").unwrap();
        assert_eq!(
            detect_with(AccelRequest::Auto, &probe).unwrap().accel,
            Accel::Kvm
        );
        fs_err::create_dir(&probe.pvm_module).unwrap();
        assert_eq!(
            detect_with(AccelRequest::Auto, &probe).unwrap().accel,
            Accel::Tcg
        );
    }
}
