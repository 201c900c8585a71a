#!/usr/bin/env bash
# Checks, inside a VM booted from an image the playbook built, that the generic parts took
# effect. Run it over SSH after the first boot of the built image (as root, or a user with sudo):
#   ssh vm 'sudo bash -s' < playbook/tests/fixture-check.sh
# Optional environment (values seen during the build, to prove they are gone):
#   KIB_BUILD_MACHINE_ID   the build VM's /etc/machine-id
#   KIB_BUILD_HOST_KEY     a host public key line (or its SHA256: fingerprint) seen during the build
#   KIB_BUILD_USER         the build user (default kib-build)
# Prints one line per failed check and exits 1 if any failed.
# `ok` and `fail` always succeed, so `test && ok || fail` is a plain if/else here.
# shellcheck disable=SC2015
set -uo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "fixture-check: run as root (ssh vm 'sudo bash -s' < fixture-check.sh)" >&2
  exit 2
fi
export PATH="/usr/sbin:/sbin:$PATH"

failed=0
pass=0
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }
ok() { pass=$((pass + 1)); }
check() { # check "message" command...
  local msg="$1"; shift
  if "$@" >/dev/null 2>&1; then ok; else fail "$msg"; fi
}

release=/etc/kib-release
check "$release is missing (the playbook's generalize role writes it)" test -s "$release"

# --- kernel: modules, sysctls, swap -----------------------------------------------------------
for m in overlay br_netfilter; do
  check "kernel module $m is not loaded" test -d "/sys/module/$m"
done
for s in net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables net.ipv4.ip_forward \
  net.ipv6.conf.all.forwarding; do
  v="$(sysctl -n "$s" 2>/dev/null)"
  [ "$v" = 1 ] && ok || fail "sysctl $s is '${v:-unset}', expected 1"
done
[ "$(grep -vc '^Filename' /proc/swaps)" = 0 ] && ok || fail "swap is on: $(tail -n +2 /proc/swaps | tr '\n' ' ')"

# --- services -----------------------------------------------------------------------------------
for u in auditd kib-firewall watchdog; do
  check "$u is not active ($(systemctl is-active "$u" 2>&1))" systemctl is-active --quiet "$u"
  check "$u is not enabled" systemctl is-enabled --quiet "$u"
done
if [ -e /dev/virtio-ports/org.qemu.guest_agent.0 ]; then
  check "qemu-guest-agent is not active although its virtio port exists" systemctl is-active --quiet qemu-guest-agent
else
  fail "no guest agent channel (/dev/virtio-ports/org.qemu.guest_agent.0): start the VM with a virtserialport named org.qemu.guest_agent.0"
fi
for u in cloud-init-local cloud-config cloud-final; do
  state="$(systemctl is-enabled "$u.service" 2>/dev/null)"
  case "$state" in enabled | static | enabled-runtime) ok ;; *) fail "$u.service is '$state', not enabled" ;; esac
done
check "cloud-init datasource config missing" test -s /etc/cloud/cloud.cfg.d/90-kib-datasources.cfg
check "/etc/cloud/cloud-init.disabled exists" test ! -e /etc/cloud/cloud-init.disabled

# --- watchdog: the daemon, not systemd, holds /dev/watchdog ---------------------------------------
if [ -e /dev/watchdog ]; then
  holders="$(for fd in /proc/[0-9]*/fd/*; do
    t="$(readlink "$fd" 2>/dev/null)" || continue
    case "$t" in /dev/watchdog*) p="${fd#/proc/}"; p="${p%%/*}"; echo "$p:$(cat "/proc/$p/comm" 2>/dev/null)" ;; esac
  done | sort -u)"
  echo "$holders" | grep -q ':watchdog$' && ok || fail "/dev/watchdog is not held by the watchdog daemon (holders: ${holders:-none})"
  echo "$holders" | grep -q '^1:' && fail "systemd (pid 1) holds /dev/watchdog as well" || ok
else
  fail "no /dev/watchdog: start the VM with an i6300esb watchdog (-device i6300esb) and check the driver"
fi
rt="$(systemctl show -p RuntimeWatchdogUSec --value 2>/dev/null)"
case "$rt" in 0 | "" | infinity) ok ;; *) fail "systemd RuntimeWatchdogUSec=$rt: systemd pets the watchdog too" ;; esac
grep -Eq '^\s*watchdog-device\s*=\s*/dev/watchdog\s*$' /etc/watchdog.conf && ok || fail "watchdog-device = /dev/watchdog not set in /etc/watchdog.conf"

# --- firewall ----------------------------------------------------------------------------------
rules="$(nft list table inet kib_filter 2>&1)"
if [ -n "$rules" ] && echo "$rules" | grep -q 'policy drop'; then
  ok
  for p in 22 6443 10250 179 5473; do echo "$rules" | grep -Eq "(^|[[:space:]{,])$p([[:space:]},]|$)" && ok || fail "TCP $p is not in the kib_filter sets"; done
  echo "$rules" | grep -q 4789 && ok || fail "UDP 4789 is not in the kib_filter sets"
  echo "$rules" | grep -q 6789 && ok || fail "UDP 6789 (the CAPI book's KubeVirt Calico VXLAN port) is not in the kib_filter sets"
else
  fail "table inet kib_filter with an input policy drop is not loaded: $rules"
fi

# --- audit -------------------------------------------------------------------------------------
loaded="$(auditctl -l 2>&1)"
for k in kib-kubernetes kib-kubelet kib-containerd kib-cni; do
  echo "$loaded" | grep -q -- "-k $k" && ok || fail "no audit rule with key $k loaded (auditctl -l)"
done
check "/etc/kubernetes/audit-policy.yaml is missing" test -s /etc/kubernetes/audit-policy.yaml
check "/var/log/kubernetes/audit/ is missing" test -d /var/log/kubernetes/audit

# --- generalization: nothing of the build survives ------------------------------------------------
mid="$(cat /etc/machine-id 2>/dev/null)"
[[ "$mid" =~ ^[0-9a-f]{32}$ ]] && ok || fail "/etc/machine-id is '$mid', not a regenerated id"
[ -n "${KIB_BUILD_MACHINE_ID:-}" ] && [ "$mid" = "$KIB_BUILD_MACHINE_ID" ] && fail "machine-id is the build's ($mid)" || ok
if [ -s "$release" ]; then
  # Everything below must be newer than /etc/kib-release, written before the clean-up.
  old_keys="$(find /etc/ssh -maxdepth 1 -name 'ssh_host_*' ! -newer "$release" 2>/dev/null)"
  [ -z "$old_keys" ] && ok || fail "SSH host keys from the build remain: $old_keys"
  old_auth="$(find /root /home -maxdepth 3 -name 'authorized_keys*' ! -newer "$release" 2>/dev/null)"
  [ -z "$old_auth" ] && ok || fail "authorized_keys from the build remain: $old_auth"
  old_ci="$(find /var/lib/cloud/instances /var/lib/cloud/seed -mindepth 1 -maxdepth 1 ! -newer "$release" 2>/dev/null)"
  [ -z "$old_ci" ] && ok || fail "cloud-init instance data from the build remains: $old_ci"
fi
ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1 && ok || fail "no SSH host keys were regenerated at boot"
if [ -n "${KIB_BUILD_HOST_KEY:-}" ]; then
  for k in /etc/ssh/ssh_host_*_key.pub; do
    fp="$(ssh-keygen -lf "$k" | awk '{print $2}')"
    if grep -qF -- "$(awk '{print $2}' "$k")" <<<"$KIB_BUILD_HOST_KEY" || [ "$fp" = "$KIB_BUILD_HOST_KEY" ]; then
      fail "$k is the build's host key"
    else ok; fi
  done
fi
getent passwd "${KIB_BUILD_USER:-kib-build}" >/dev/null && fail "the build user ${KIB_BUILD_USER:-kib-build} still exists" || ok
if [ -d /etc/NetworkManager/system-connections ]; then
  stale="$(find /etc/NetworkManager/system-connections -name '*.nmconnection' ! -newer "$release" -exec grep -l '^uuid=' {} + 2>/dev/null)"
  [ -z "$stale" ] && ok || fail "NetworkManager connections from the build keep their uuid: $stale"
fi
# NetworkManager's per-host secret (stable IPv6 addresses derive from it) and DHCP leases are
# made at first boot, never kept from the build (issue #16.8).
if [ -s "$release" ] && [ -d /var/lib/NetworkManager ]; then
  stale="$(find /var/lib/NetworkManager -maxdepth 1 \( -name secret_key -o -name '*.lease' \) ! -newer "$release" 2>/dev/null)"
  [ -z "$stale" ] && ok || fail "NetworkManager state from the build remains: $stale"
fi
# No log of the build survives: its SSH logins (journal, auth.log/secure, audit, wtmp).
bu="${KIB_BUILD_USER:-kib-build}"
journalctl -q --no-pager 2>/dev/null | grep -qF "for $bu from" && fail "the journal holds the build's SSH logins" || ok
for f in /var/log/auth.log /var/log/secure; do
  [ -f "$f" ] && grep -qF "for $bu from" "$f" && fail "$f holds the build's SSH logins" || ok
done
[ -f /var/log/audit/audit.log ] && grep -qF "acct=\"$bu\"" /var/log/audit/audit.log && fail "audit.log holds the build user's records" || ok
if [ -f /var/log/wtmp ] && command -v last >/dev/null; then
  last -w -f /var/log/wtmp 2>/dev/null | grep -qw -- "$bu" && fail "wtmp holds the build user's logins" || ok
fi

echo "fixture-check: $pass passed, $failed failed"
[ "$failed" -eq 0 ]
