//! Guest agent and watchdog checks.

use std::time::Duration;

use futures::future::BoxFuture;
use kib_vm::Vm;

use super::{OPT_IN, chain, check_body, run, run_ok};
use crate::check::{Check, CheckResult};
use crate::context::Context;

/// The RPCs virt-handler requires before it sets `AgentConnected`
/// (kubevirt `pkg/virt-handler/guestagent.go`).
pub const KUBEVIRT_REQUIRED_RPCS: &[&str] = &[
    "guest-ping",
    "guest-get-time",
    "guest-info",
    "guest-shutdown",
    "guest-network-get-interfaces",
    "guest-get-fsinfo",
    "guest-get-host-name",
    "guest-get-users",
    "guest-get-timezone",
    "guest-get-osinfo",
];

/// 3. The guest agent answers what KubeVirt asks.
pub struct GuestAgent;

impl Check for GuestAgent {
    fn name(&self) -> &'static str {
        "guest-agent"
    }
    fn title(&self) -> &'static str {
        "qemu-guest-agent answers KubeVirt's RPCs (ping, info, osinfo, interfaces)"
    }
    fn run<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, CheckResult> {
        check_body!(async {
            let fail = |what: &str, e: &dyn std::error::Error| {
                CheckResult::fail(format!("{what}: {}", chain(e)))
            };
            let mut qga = ctx
                .qga()
                .await
                .map_err(|e| fail("no guest agent on org.qemu.guest_agent.0", &e))?;
            qga.ping().await.map_err(|e| fail("guest-ping", &e))?;
            let info = qga.info().await.map_err(|e| fail("guest-info", &e))?;
            let missing: Vec<&str> = KUBEVIRT_REQUIRED_RPCS
                .iter()
                .copied()
                .filter(|rpc| {
                    !info
                        .supported_commands
                        .iter()
                        .any(|c| c.name == *rpc && c.enabled)
                })
                .collect();
            if !missing.is_empty() {
                return Err(CheckResult::fail(format!(
                    "agent {} lacks or disables RPCs KubeVirt requires (AgentVersionNotSupported): {}",
                    info.version,
                    missing.join(", ")
                )));
            }
            let os = qga
                .os_info()
                .await
                .map_err(|e| fail("guest-get-osinfo", &e))?;
            if os.id.is_none() && os.pretty_name.is_none() {
                return Err(CheckResult::fail(
                    "guest-get-osinfo returned no OS id or name",
                ));
            }
            let ifaces = qga
                .network_interfaces()
                .await
                .map_err(|e| fail("guest-network-get-interfaces", &e))?;
            let has_ip = ifaces
                .iter()
                .filter(|i| i.name != "lo")
                .any(|i| i.ip_addresses.iter().any(|a| a.ip_address_type == "ipv4"));
            if !has_ip {
                return Err(CheckResult::fail(format!(
                    "guest-network-get-interfaces lists no IPv4 address besides lo ({} interfaces)",
                    ifaces.len()
                )));
            }
            tracing::info!(agent = %info.version, os = ?os.pretty_name, "guest agent ok");
            Ok(CheckResult::Pass)
        })
    }
}

/// The processes holding a watchdog device open: `pid comm device` lines.
const WATCHDOG_HOLDERS: &str = include_str!("../scripts/watchdog-holders.sh");

/// The identity the kernel's i6300esb driver gives its device (`ESB_MODULE_NAME`,
/// `drivers/watchdog/i6300esb.c`: `"i6300ESB timer"`); softdog says `Software Watchdog`.
pub const I6300ESB_IDENTITY: &str = "i6300ESB";

/// Every watchdog device: `name|identity|state` lines (`state` is `active` once a daemon
/// opened and started it; empty on kernels without the attribute).
const WATCHDOG_DEVICES: &str = r#"for d in /sys/class/watchdog/watchdog*; do [ -e "$d/identity" ] && echo "${d##*/}|$(cat "$d/identity")|$(cat "$d/state" 2>/dev/null)"; done; true"#;

/// 4. The i6300esb device KubeVirt attaches is there, and a daemon pets it.
pub struct Watchdog;

impl Check for Watchdog {
    fn name(&self) -> &'static str {
        "watchdog"
    }
    fn title(&self) -> &'static str {
        "the i6300ESB watchdog KubeVirt attaches is present, active and held by a daemon"
    }
    fn run<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, CheckResult> {
        check_body!(async {
            let devices = run_ok(ctx, WATCHDOG_DEVICES, false).await?;
            let list: Vec<(&str, &str, &str)> = devices
                .stdout
                .lines()
                .filter_map(|l| {
                    let mut f = l.splitn(3, '|');
                    Some((
                        f.next()?.trim(),
                        f.next()?.trim(),
                        f.next().unwrap_or("").trim(),
                    ))
                })
                .filter(|(n, _, _)| !n.is_empty())
                .collect();
            let seen = || {
                list.iter()
                    .map(|(n, i, _)| format!("{n}: {i}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let Some(&(name, identity, state)) =
                list.iter().find(|(_, i, _)| i.contains(I6300ESB_IDENTITY))
            else {
                let lsmod = run(
                    ctx,
                    "lsmod | grep -i -e i6300 -e wdt -e softdog; true",
                    false,
                )
                .await?;
                return Err(CheckResult::fail(format!(
                    "no {I6300ESB_IDENTITY} watchdog (the device KubeVirt attaches); watchdog devices: [{}]; lsmod: `{}`",
                    seen(),
                    lsmod.out().replace('\n', " | ")
                )));
            };
            // The daemon must hold this device: /dev/watchdogN, or /dev/watchdog for watchdog0.
            let holders = run_ok(ctx, WATCHDOG_HOLDERS, true).await?;
            let held: Vec<&str> = holders
                .stdout
                .lines()
                .filter(|l| {
                    let dev = l.split_whitespace().nth(2).unwrap_or("");
                    dev == format!("/dev/{name}") || (name == "watchdog0" && dev == "/dev/watchdog")
                })
                .collect();
            if held.is_empty() {
                let svc = run(
                    ctx,
                    "systemctl is-active watchdog; systemctl is-enabled watchdog",
                    false,
                )
                .await?;
                let others: Vec<&str> = holders
                    .stdout
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .collect();
                return Err(CheckResult::fail(format!(
                    "{name} ({identity}) is present but no process holds it (watchdog.service: {}; holders of other devices: [{}])",
                    svc.stdout.split_whitespace().collect::<Vec<_>>().join("/"),
                    others.join(", ")
                )));
            }
            if !state.is_empty() && state != "active" {
                return Err(CheckResult::fail(format!(
                    "{name} ({identity}) is held by [{}] but its state is `{state}`: nobody started it",
                    held.join(", ")
                )));
            }
            tracing::info!(device = name, holders = ?held, "watchdog held");
            Ok(CheckResult::Pass)
        })
    }
}

/// 4b (optional). Killing the daemon makes QEMU report the watchdog action over QMP.
pub struct WatchdogFires;

impl Check for WatchdogFires {
    fn name(&self) -> &'static str {
        "watchdog-fires"
    }
    fn title(&self) -> &'static str {
        "killing the watchdog daemon makes QEMU report WATCHDOG over QMP"
    }
    fn can_run(&self, ctx: &Context) -> Result<(), String> {
        if ctx.watchdog_fire {
            Ok(())
        } else {
            Err(format!("{OPT_IN} (`--watchdog-fire`; it resets the VM)"))
        }
    }
    fn required(&self, _ctx: &Context) -> bool {
        false
    }
    fn run<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, CheckResult> {
        check_body!(async {
            let Some(vm) = ctx.vm.as_ref() else {
                return Err(CheckResult::fail("no VM behind this context: no QMP"));
            };
            let mut qmp = vm
                .qmp()
                .await
                .map_err(|e| CheckResult::fail(format!("no QMP: {}", chain(&e))))?;
            let holders = run_ok(ctx, WATCHDOG_HOLDERS, true).await?;
            let pids: Vec<&str> = holders
                .stdout
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .collect();
            if pids.is_empty() {
                return Err(CheckResult::fail("no process holds /dev/watchdog"));
            }
            // SIGKILL: the device is closed without the magic character, so the timer keeps
            // running and the hardware fires.
            let _ = run(
                ctx,
                &format!(
                    "systemctl kill -s KILL watchdog 2>/dev/null; kill -9 {}",
                    pids.join(" ")
                ),
                true,
            )
            .await;
            match qmp.wait_event("WATCHDOG", Duration::from_secs(180)).await {
                Ok(ev) => {
                    tracing::info!(data = %ev.data, "watchdog fired");
                    Ok(CheckResult::Pass)
                }
                Err(e) => Err(CheckResult::fail(format!(
                    "no WATCHDOG event within 180 s: {}",
                    chain(&e)
                ))),
            }
        })
    }
}
