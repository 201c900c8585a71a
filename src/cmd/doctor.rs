//! `kib doctor`: checks the host for what `kib build` needs and prints the exact command that
//! installs what is missing.

use std::io::Write;
use std::process::{Command, ExitCode, Stdio};

use crate::cli::{GlobalArgs, OutputFormat};
use crate::error_render::Failure;

/// Check that this host can run `kib build`.
///
/// Looks for QEMU (`qemu-system-x86_64`, `qemu-img` with zstd support), hardware acceleration
/// (`/dev/kvm`, and whether a stock guest kernel can boot on it), `ansible-playbook`,
/// `python3`, passt for `--network outbound`, and OVMF for `--firmware uefi`. Exits 1 when
/// something required is missing.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Write the results as `text` (a table) or `json`.
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

#[derive(Debug, serde::Serialize)]
struct Requirement {
    name: &'static str,
    ok: bool,
    required: bool,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

const SETUP: &str = "sudo scripts/setup-host.sh   # from a kib checkout; on Debian 12 it takes QEMU from bookworm-backports";

fn version_of(program: &str, arg: &str) -> Option<String> {
    let out = Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.lines().next().unwrap_or_default().trim().to_owned())
}

fn tool(name: &'static str, program: &str, arg: &str, required: bool, fix: &str) -> Requirement {
    match version_of(program, arg) {
        Some(v) => Requirement {
            name,
            ok: true,
            required,
            detail: v,
            fix: None,
        },
        None => Requirement {
            name,
            ok: false,
            required,
            detail: format!("`{program}` not found on PATH"),
            fix: Some(fix.to_owned()),
        },
    }
}

fn qemu_img_zstd() -> Requirement {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            return Requirement {
                name: "qemu-img zstd",
                ok: false,
                required: false,
                detail: format!("no temp dir: {e}"),
                fix: None,
            };
        }
    };
    let probe = dir.path().join("probe.qcow2");
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-o", "compression_type=zstd"])
        .arg(&probe)
        .arg("1M")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    Requirement {
        name: "qemu-img zstd",
        ok,
        required: false,
        detail: if ok {
            "qcow2 zstd compression available (default export)".to_owned()
        } else {
            "this qemu-img cannot write zstd-compressed qcow2; use `--compression zlib`".to_owned()
        },
        fix: (!ok).then(|| {
            "install QEMU >= 5.1 built with zstd (Debian 12: bookworm-backports)".to_owned()
        }),
    }
}

fn accel() -> Requirement {
    let (kvm, detail) = match kib_vm::accel::detect(kib_vm::AccelRequest::Auto) {
        Ok(choice) => (
            matches!(choice.accel, kib_vm::Accel::Kvm),
            format!("{}: {}", choice.accel, choice.reason),
        ),
        Err(err) => (false, err.to_string()),
    };
    Requirement {
        name: "acceleration",
        ok: kvm,
        required: false,
        detail,
        fix: (!kvm).then(|| {
            "builds still work under TCG, only slower; KVM needs a read-writable /dev/kvm (e.g. `sudo usermod -aG kvm $USER`, then log in again) on a host that can boot a stock guest kernel (not a PVM host)".to_owned()
        }),
    }
}

fn ovmf() -> Requirement {
    let path = kib_vm::qemu::OVMF_CODE;
    let ok = std::path::Path::new(path).exists();
    Requirement {
        name: "OVMF (UEFI)",
        ok,
        required: false,
        detail: if ok {
            path.to_owned()
        } else {
            format!("`{path}` not found; only needed for `--firmware uefi`")
        },
        fix: (!ok).then(|| "sudo apt-get install ovmf".to_owned()),
    }
}

impl Args {
    pub(crate) async fn run(self, _global: &GlobalArgs) -> anyhow::Result<ExitCode> {
        let checks = vec![
            tool(
                "qemu-system-x86_64",
                "qemu-system-x86_64",
                "--version",
                true,
                SETUP,
            ),
            tool("qemu-img", "qemu-img", "--version", true, SETUP),
            qemu_img_zstd(),
            accel(),
            tool(
                "ansible-playbook",
                "ansible-playbook",
                "--version",
                true,
                "python3 -m pip install 'ansible-core>=2.16,<2.19'",
            ),
            tool(
                "python3",
                "python3",
                "--version",
                true,
                "sudo apt-get install python3",
            ),
            // `--network outbound` (the default) runs the guest's network through passt.
            tool(
                "passt",
                kib_vm::qemu::PASST,
                "--version",
                true,
                "sudo apt-get install passt   # or build with `--network outbound-host` / `isolated`",
            ),
            ovmf(),
            // `kib conformance` writes the ConfigDrive as ISO 9660 as KubeVirt does
            // (xorrisofs when installed, else genisoimage; kib_vm::seed::Seed::write_iso).
            tool(
                "genisoimage (conformance ConfigDrive)",
                "genisoimage",
                "--version",
                false,
                "sudo apt-get install genisoimage",
            ),
        ];
        let mut out = std::io::stdout().lock();
        match self.output {
            OutputFormat::Json => {
                serde_json::to_writer_pretty(&mut out, &checks)?;
                writeln!(out)?;
            }
            OutputFormat::Text => {
                for c in &checks {
                    let status = match (c.ok, c.required) {
                        (true, _) => "ok",
                        (false, true) => "MISSING",
                        (false, false) => "warn",
                    };
                    writeln!(out, "{status:<8} {:<20} {}", c.name, c.detail)?;
                    if let Some(fix) = &c.fix {
                        writeln!(out, "{:<29}fix: {fix}", "")?;
                    }
                }
            }
        }
        let missing: Vec<&str> = checks
            .iter()
            .filter(|c| c.required && !c.ok)
            .map(|c| c.name)
            .collect();
        if missing.is_empty() {
            Ok(ExitCode::SUCCESS)
        } else {
            Err(Failure(format!(
                "This host is missing what `kib build` needs: {}",
                missing.join(", ")
            ))
            .into())
        }
    }
}
