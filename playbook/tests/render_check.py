#!/usr/bin/env python3
"""Parses the templates rendered by tests/render.yml and asserts what Kubernetes needs.

Usage: render_check.py DIR   (python3 stdlib + PyYAML; tomllib needs Python >= 3.11)
Prints one line per failed check and exits 1 if any failed.
"""

import configparser
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

failures: list[str] = []


def check(cond: bool, what: str) -> None:
    if not cond:
        failures.append(what)


def dig(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def containerd(path: Path) -> None:
    cfg = tomllib.loads(path.read_text())
    # group_vars pins containerd 2.3.x: config version 4 (server listeners are plugins).
    check(cfg.get("version") == 4, f"{path.name}: version must be 4 (containerd 2.3), got {cfg.get('version')!r}")
    plugins = cfg.get("plugins", {})
    images = plugins.get("io.containerd.cri.v1.images", {})
    runtime = plugins.get("io.containerd.cri.v1.runtime", {})
    sandbox = dig(images, "pinned_images", "sandbox")
    check(isinstance(sandbox, str) and re.fullmatch(r"[\w.-]+(:\d+)?/[\w./-]*pause:[\w.-]+", sandbox or "") is not None,
          f"{path.name}: pinned_images.sandbox must be a pause image, got {sandbox!r}")
    check(dig(images, "registry", "config_path") == "/etc/containerd/certs.d",
          f"{path.name}: registry.config_path must be /etc/containerd/certs.d")
    runc = dig(runtime, "containerd", "runtimes", "runc") or {}
    check(runc.get("runtime_type") == "io.containerd.runc.v2", f"{path.name}: runc runtime_type must be io.containerd.runc.v2")
    check(dig(runc, "options", "SystemdCgroup") is True, f"{path.name}: runc options SystemdCgroup must be true")
    check(dig(runtime, "containerd", "default_runtime_name") == "runc", f"{path.name}: default_runtime_name must be runc")
    check(dig(plugins, "io.containerd.server.v1.grpc", "address") in ("/run/containerd/containerd.sock", "/var/run/containerd/containerd.sock"),
          f"{path.name}: plugins.io.containerd.server.v1.grpc.address must be containerd's standard socket (CAPK's CRI_PATH)")
    check("grpc" not in cfg, f"{path.name}: [grpc] is deprecated in config version 4")
    check("io.containerd.grpc.v1.cri" not in plugins, f"{path.name}: containerd 1.x CRI plugin section present")
    check("cri" not in cfg.get("disabled_plugins", []), f"{path.name}: the CRI plugin is disabled")


def crictl(path: Path) -> None:
    cfg = yaml.safe_load(path.read_text())
    check(cfg.get("runtime-endpoint") == "unix:///var/run/containerd/containerd.sock",
          f"{path.name}: runtime-endpoint must be unix:///var/run/containerd/containerd.sock, got {cfg.get('runtime-endpoint')!r}")
    check(cfg.get("image-endpoint") == cfg.get("runtime-endpoint"), f"{path.name}: image-endpoint must match runtime-endpoint")


def audit_policy(path: Path) -> None:
    cfg = yaml.safe_load(path.read_text())
    check(cfg.get("apiVersion") == "audit.k8s.io/v1", f"{path.name}: apiVersion must be audit.k8s.io/v1")
    check(cfg.get("kind") == "Policy", f"{path.name}: kind must be Policy")
    rules = cfg.get("rules")
    check(isinstance(rules, list) and len(rules) > 0, f"{path.name}: rules must be a non-empty list")
    levels = {"None", "Metadata", "Request", "RequestResponse"}
    for i, rule in enumerate(rules or []):
        check(rule.get("level") in levels, f"{path.name}: rule {i} has level {rule.get('level')!r}")
    secrets = [r for r in rules or [] if any("secrets" in res.get("resources", []) for res in r.get("resources", []))]
    check(bool(secrets) and secrets[0]["level"] in ("None", "Metadata"), f"{path.name}: Secrets must be logged at Metadata at most")
    check((rules or [{}])[-1].get("level") is not None and not (rules or [{}])[-1].keys() - {"level"},
          f"{path.name}: the last rule must be a catch-all")


def kubeadm(path: Path) -> None:
    cfg = yaml.safe_load(path.read_text())
    check(re.fullmatch(r"kubeadm\.k8s\.io/v1beta\d+", cfg.get("apiVersion", "")) is not None, f"{path.name}: bad apiVersion")
    check(cfg.get("kind") == "ClusterConfiguration", f"{path.name}: kind must be ClusterConfiguration")
    check(re.fullmatch(r"v\d+\.\d+\.\d+", str(cfg.get("kubernetesVersion"))) is not None,
          f"{path.name}: kubernetesVersion must be a resolved vX.Y.Z, got {cfg.get('kubernetesVersion')!r}")
    check(bool(cfg.get("imageRepository")), f"{path.name}: imageRepository missing")


def kubelet_env(path: Path) -> None:
    lines = [l for l in path.read_text().splitlines() if l and not l.startswith("#")]
    check(any(re.fullmatch(r"KUBELET_EXTRA_ARGS=.*", l) for l in lines), f"{path.name}: KUBELET_EXTRA_ARGS= missing")


def repo(path: Path) -> None:
    cp = configparser.ConfigParser(interpolation=None)
    cp.read_string(path.read_text())
    k = cp["kubernetes"]
    check(re.fullmatch(r"https://pkgs\.k8s\.io/core:/stable:/v\d+\.\d+/rpm/", k.get("baseurl", "")) is not None,
          f"{path.name}: baseurl is not a pkgs.k8s.io minor repo")
    check(k.get("gpgcheck") == "1", f"{path.name}: gpgcheck must be 1")
    check(set(k.get("exclude", "").split()) >= {"kubelet", "kubeadm", "kubectl", "cri-tools", "kubernetes-cni"},
          f"{path.name}: exclude must hold the Kubernetes packages")


# The overlay ports each CNI needs open (roles/firewall/defaults/main.yml cites the upstream docs).
CNI_PORTS = {
    "calico": {"tcp": {"179", "5473"}, "udp": {"4789", "6789", "51820-51821"}, "protocols": {"4"}},
    "flannel": {"tcp": set(), "udp": {"8472"}, "protocols": set()},
    "cilium": {"tcp": {"4240", "4244"}, "udp": {"8472", "6081", "51871"}, "protocols": set()},
}


def firewall(path: Path, cni: str = "calico") -> None:
    text = "\n".join(l for l in path.read_text().splitlines() if not l.lstrip().startswith("#"))
    check("flush ruleset" not in text, f"{path.name}: must not flush the whole ruleset (kube-proxy/CNI tables)")
    check(re.search(r"hook input priority filter; policy drop;", text) is not None, f"{path.name}: input policy must be drop")
    check(re.search(r"chain forward", text) is None, f"{path.name}: forwarding is left to the CNI (no forward chain)")
    tcp = re.search(r"set tcp_ports \{.*?elements = \{([^}]*)\}", text, re.S)
    udp = re.search(r"set udp_ports \{.*?elements = \{([^}]*)\}", text, re.S)
    tcp_ports = {p.strip() for p in (tcp.group(1) if tcp else "").split(",")}
    udp_ports = {p.strip() for p in (udp.group(1) if udp else "").split(",")}
    for port in ("22", "6443", "10250", "2379-2380", "10257", "10259", "30000-32767") + tuple(CNI_PORTS[cni]["tcp"]):
        check(port in tcp_ports, f"{path.name}: TCP {port} must be open ({cni})")
    for port in ("30000-32767",) + tuple(CNI_PORTS[cni]["udp"]):
        check(port in udp_ports, f"{path.name}: UDP {port} must be open ({cni})")
    # Another CNI's overlay port stays closed: the choice is explicit.
    for other, ports in CNI_PORTS.items():
        for port in ports["udp"] - CNI_PORTS[cni]["udp"]:
            check(port not in udp_ports, f"{path.name}: UDP {port} ({other}) must be closed for {cni}")
        for port in ports["tcp"] - CNI_PORTS[cni]["tcp"]:
            check(port not in tcp_ports, f"{path.name}: TCP {port} ({other}) must be closed for {cni}")
    ipip = re.search(r"meta l4proto 4 accept", text) is not None
    check(ipip == ("4" in CNI_PORTS[cni]["protocols"]), f"{path.name}: IP-in-IP (protocol 4) accepted={ipip}, wrong for {cni}")
    for iface in ("cali*", "tunl*", "vxlan.calico"):
        check(f'iifname "{iface}" accept' in text, f"{path.name}: traffic from {iface} must be accepted")
    nft = shutil.which("nft") or next((p for p in ("/usr/sbin/nft", "/sbin/nft") if Path(p).exists()), None)
    if nft:
        r = subprocess.run([nft, "-c", "-f", str(path)], capture_output=True, text=True)
        check(r.returncode == 0, f"{path.name}: `nft -c -f` failed: {r.stderr.strip()}")
        # A drop-in that opens one more port must load with it.
        dropin = path.parent / "firewall.d" / "50-test.nft"
        dropin.write_text("add element inet kib_filter tcp_ports { 8443 }\n")
        r = subprocess.run([nft, "-c", "-f", str(path)], capture_output=True, text=True)
        dropin.unlink()
        check(r.returncode == 0, f"{path.name}: a drop-in adding a port fails `nft -c -f`: {r.stderr.strip()}")
    else:
        print(f"render_check: nft not installed, {path.name} syntax not checked (scripts/setup-host.sh installs it)")


def sysctl(path: Path) -> None:
    kv = dict(l.split(" = ", 1) for l in path.read_text().splitlines() if l and not l.startswith("#"))
    for key in ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables",
                "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):
        check(kv.get(key) == "1", f"{path.name}: {key} must be 1")


def modules(path: Path) -> None:
    mods = {l.strip() for l in path.read_text().splitlines() if l.strip() and not l.startswith("#")}
    check({"overlay", "br_netfilter"} <= mods, f"{path.name}: overlay and br_netfilter must be loaded")


def cloud_init(path: Path) -> None:
    cfg = yaml.safe_load(path.read_text())
    ds = cfg.get("datasource_list", [])
    check("ConfigDrive" in ds and "NoCloud" in ds, f"{path.name}: datasource_list must hold ConfigDrive and NoCloud, got {ds}")


def unit(path: Path) -> None:
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    cp.optionxform = str
    cp.read_string(path.read_text())
    check("ExecStart" in cp["Service"], f"{path.name}: no ExecStart")
    check("WantedBy" in cp["Install"], f"{path.name}: no WantedBy (cannot be enabled)")


def watchdog_systemd(path: Path) -> None:
    text = path.read_text()
    check(re.search(r"^RuntimeWatchdogSec=off$", text, re.M) is not None,
          f"{path.name}: systemd must not pet the watchdog the daemon uses")


def audit_rules(path: Path) -> None:
    rules = [l for l in path.read_text().splitlines() if l and not l.startswith("#")]
    for l in rules:
        check(re.fullmatch(r"-w /\S+ -p [rwxa]+ -k kib-[a-z]+", l) is not None, f"{path.name}: bad rule {l!r}")
    joined = "\n".join(rules)
    for p in ("/etc/kubernetes", "/usr/bin/kubelet", "/etc/containerd", "/etc/cni", "/usr/local/sbin/runc"):
        check(f"-w {p} " in joined, f"{path.name}: {p} is not watched")


CHECKS = {
    "containerd-config.toml": containerd,
    "crictl.yaml": crictl,
    "audit-policy.yaml": audit_policy,
    "kubeadm-images.yaml": kubeadm,
    "kubelet.env": kubelet_env,
    "kubernetes.repo": repo,
    "firewall.nft": firewall,
    "firewall-flannel.nft": lambda p: firewall(p, "flannel"),
    "firewall-cilium.nft": lambda p: firewall(p, "cilium"),
    "sysctl.conf": sysctl,
    "modules-load.conf": modules,
    "cloud-init-datasources.cfg": cloud_init,
    "containerd.service": unit,
    "kib-firewall.service": unit,
    "watchdog-systemd.conf": watchdog_systemd,
    "kib.rules": audit_rules,
}


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(sys.argv[1])
    for name, fn in CHECKS.items():
        path = root / name
        if not path.is_file():
            failures.append(f"{name}: not rendered")
            continue
        try:
            fn(path)
        except Exception as e:  # a parse error is a failed check, with its cause
            failures.append(f"{name}: cannot parse: {type(e).__name__}: {e}")
    images = json.loads((Path(__file__).resolve().parent.parent / "files" / "images.json").read_text())
    def tagged(lst) -> bool:
        return isinstance(lst, list) and all(isinstance(i, str) and re.search(r":[\w.-]+$", i) for i in lst)
    check(tagged(images.get("images")), "files/images.json: images must be a list of tagged references")
    cni = images.get("cni") if isinstance(images.get("cni"), dict) else {}
    check(set(cni) == set(CNI_PORTS), f"files/images.json: cni must have one list per CNI {sorted(CNI_PORTS)}, has {sorted(cni)}")
    for name, lst in cni.items():
        check(tagged(lst) and len(lst) > 0, f"files/images.json: cni.{name} must be a non-empty list of tagged references")
    for f in failures:
        print(f"render_check: FAIL {f}")
    print(f"render_check: {len(CHECKS) + 1 - len({f.split(':')[0] for f in failures})}/{len(CHECKS) + 1} files OK,"
          f" {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
