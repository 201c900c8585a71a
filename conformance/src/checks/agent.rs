//! Guest agent and watchdog checks.

use std::time::Duration;

use futures::future::BoxFuture;
use kib_vm::Vm;

use super::{chain, check_body, run, run_ok};
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

/// 4. `/dev/watchdog` exists and a daemon holds it.
pub struct Watchdog;

impl Check for Watchdog {
    fn name(&self) -> &'static str {
        "watchdog"
    }
    fn title(&self) -> &'static str {
        "i6300esb /dev/watchdog present and held by a daemon"
    }
    fn run<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, CheckResult> {
        check_body!(async {
            let dev = run(
                ctx,
                "test -c /dev/watchdog && cat /sys/class/watchdog/watchdog0/identity 2>/dev/null",
                false,
            )
            .await?;
            if !dev.success() {
                let lspci = run(ctx, "lsmod | grep -i -e i6300 -e wdt; true", false).await?;
                return Err(CheckResult::fail(format!(
                    "/dev/watchdog is missing (driver i6300esb not loaded? lsmod: `{}`)",
                    lspci.out()
                )));
            }
            let holders = run_ok(ctx, WATCHDOG_HOLDERS, true).await?;
            let list: Vec<&str> = holders
                .stdout
                .lines()
                .filter(|l| !l.trim().is_empty())
                .collect();
            if list.is_empty() {
                let svc = run(
                    ctx,
                    "systemctl is-active watchdog; systemctl is-enabled watchdog",
                    false,
                )
                .await?;
                return Err(CheckResult::fail(format!(
                    "{} is present but no process holds it (watchdog.service: {})",
                    dev.out(),
                    svc.stdout.split_whitespace().collect::<Vec<_>>().join("/")
                )));
            }
            tracing::info!(holders = ?list, "watchdog held");
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
            Err("not asked for (`--watchdog-fire`; it resets the VM)".to_owned())
        }
    }
    fn run<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, CheckResult> {
        check_body!(async {
            let mut qmp = ctx
                .vm
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
