#!/usr/bin/env python3
"""kib's benchmarks: kib side by side with what users would run instead, in one invocation.

  build    `kib build` vs Packer's qemu builder (Debian's packer 1.6.6): the offline fixture
           base image, one shell provisioner line, shutdown, compressed qcow2 export.
  publish  `kib publish` vs `buildah build` + `buildah push` of a >= 1 GiB qcow2 into a
           containerDisk on a local registry (Debian's docker-registry on 127.0.0.1).
  memory   peak RSS of `kib publish` for 1 GiB and 4 GiB qcow2s (it must stay flat).
  ceiling  sha256, gzip/pigz/zstd and registry-ingest throughput of this machine on the
           same file, to read the push figure against the physical limit.

Every comparison runs both sides in the same invocation, several rounds, alternating which
side goes first, and reports min/median per side and the ratio. Results go to a table on
stdout and to bench/results.json.

Usage (from the repository root, after `sudo scripts/setup-host.sh` and
`cargo build --release`):
    python3 bench/bench.py                     # everything, 3 rounds
    python3 bench/bench.py --only publish,ceiling --rounds 5
    python3 bench/bench.py --smoke --kib target/debug/kib --out /tmp/r.json   # CI: tiny inputs

Guests get an isolated network (QEMU user networking with restrict=on; SSH forwarded to
127.0.0.1 only) for both tools, so nothing a guest sends leaves this host.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = Path(os.environ.get("KIB_FIXTURE_DIR", "/var/cache/kib/fixture")) / "debian-12-fixture.qcow2"
MIB = 1024 * 1024
PROVISION = "echo hello | sudo tee /etc/marker"
# What the serial console shows when the guest kernel starts and when sshd is up: the guest's
# own boot, identical for both tools, is subtracted to get each tool's overhead.
KERNEL_START = re.compile(rb"Linux version")
SSHD_STARTED = re.compile(rb"Started .*(ssh|sshd)\.service")
ANSI = re.compile(rb"\x1b\[[0-9;]*m")


class BenchError(Exception):
    """A failure with a hint that says what to do."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise BenchError(
            f"missing tools: {', '.join(missing)}",
            "install them with `sudo scripts/setup-host.sh` (it installs the bench tools too)",
        )


# --- running and timing commands ----------------------------------------------------------------


@dataclass
class Run:
    """One timed command: wall seconds, peak RSS of the process itself, timestamped output."""

    wall: float
    maxrss_kib: int
    lines: list[tuple[float, str]] = field(default_factory=list)

    def first(self, pattern: str) -> float | None:
        rx = re.compile(pattern)
        return next((t for t, line in self.lines if rx.search(line)), None)


def timed(cmd: list[str], *, cwd: Path | None = None, env: dict | None = None,
          log: Path | None = None, stdin: int | None = subprocess.DEVNULL) -> Run:
    """Runs cmd, stamping each output line with the seconds since start. Fails loudly."""
    # Peak RSS comes from GNU time, not from our own wait4: Linux keeps a process's RSS high-water
    # mark across exec, and a child forked (or vforked) from this Python starts with Python's.
    with tempfile.NamedTemporaryFile(prefix="kib-bench-rss-") as rss:
        return _timed(["/usr/bin/time", "-q", "-f", "%M", "-o", rss.name, *map(str, cmd)],
                      cwd=cwd, env=env, log=log, stdin=stdin, rss=Path(rss.name))


def _timed(cmd: list[str], *, cwd, env, log, stdin, rss: Path) -> Run:
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[tuple[float, str]] = []
    assert proc.stdout is not None
    for raw in proc.stdout:
        lines.append((time.monotonic() - t0, raw.decode(errors="replace").rstrip("\n")))
    proc.wait()
    wall = time.monotonic() - t0
    if log is not None:
        log.write_text("".join(f"[{t:8.2f}] {line}\n" for t, line in lines))
    if proc.returncode != 0:
        tail = "\n".join(line for _, line in lines[-25:])
        raise BenchError(f"`{' '.join(cmd[6:])}` exited {proc.returncode}:\n{tail}",
                         f"full output: {log}" if log else None)
    # GNU time prints the child's ru_maxrss (KiB) as the last line of its -o file.
    maxrss = int(rss.read_text().split()[-1])
    return Run(wall=wall, maxrss_kib=maxrss, lines=lines)


class SerialWatch:
    """Follows a serial log that a VM writes (found by glob) and stamps the kernel start and
    sshd start, in seconds since the watch began."""

    def __init__(self, pattern_dir: Path, glob: str):
        self.dir, self.glob = pattern_dir, glob
        self.t0 = time.monotonic()
        self.kernel: float | None = None
        self.sshd: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self) -> SerialWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def kernel_start(self) -> float | None:
        """Seconds from the watch's start (just before the tool starts) to the kernel's first line."""
        return self.kernel

    def guest_boot(self) -> float | None:
        if self.kernel is None or self.sshd is None:
            return None
        return self.sshd - self.kernel

    def _follow(self) -> None:
        path, offset, buf = None, 0, b""
        while not self._stop.wait(0.1):
            if path is None:
                found = sorted(self.dir.glob(self.glob)) if self.dir.exists() else []
                if not found:
                    continue
                path = found[0]
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:  # the tool removed its work dir: the VM is gone
                return
            if not chunk:
                continue
            offset += len(chunk)
            buf = (buf + ANSI.sub(b"", chunk))[-65536:]
            now = time.monotonic() - self.t0
            if self.kernel is None and KERNEL_START.search(buf):
                self.kernel = now
            if self.kernel is not None and self.sshd is None and SSHD_STARTED.search(buf):
                self.sshd = now
                return


# --- statistics and output -----------------------------------------------------------------------


def summary(samples: list[float]) -> dict:
    return {"min": min(samples), "median": statistics.median(samples), "samples": samples}


def med(d: dict, key: str) -> float | None:
    v = d.get(key)
    return v["median"] if v else None


def fmt_s(v: float | None) -> str:
    return "-" if v is None else f"{v:7.1f} s"


def table(rows: list[tuple], header: tuple) -> str:
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    out = []
    for n, r in enumerate(cells):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


# --- the machine ---------------------------------------------------------------------------------


def kvm_usable() -> tuple[bool, str]:
    """The same rule as `kib build --accel auto`: KVM only where it can boot a stock kernel."""
    if Path("/sys/module/kvm_pvm").exists():
        return False, "PVM host (/sys/module/kvm_pvm): a stock guest kernel hangs under its KVM"
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError as e:
        return False, f"/dev/kvm: {e.strerror}"
    return True, "/dev/kvm opens read-write"


def machine() -> dict:
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    kvm, why = kvm_usable()
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?")
    return {"cores": os.cpu_count(), "memory_gib": round(mem_kib / MIB, 1), "cpu": model,
            "accel": "kvm" if kvm else "tcg", "accel_reason": why,
            "os": platform_name()}


def platform_name() -> str:
    try:
        fields = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
        return fields.get("PRETTY_NAME", "?").strip('"')
    except OSError:
        return "?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- a local registry ----------------------------------------------------------------------------


@contextlib.contextmanager
def registry(work: Path):
    """Debian's docker-registry on a free 127.0.0.1 port, stopped on exit."""
    need("docker-registry")
    port = free_port()
    root = work / "registry"
    root.mkdir()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n")
    log = open(root / "registry.log", "wb")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).close()
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"docker-registry did not start; see {root / 'registry.log'}")
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


# --- inputs --------------------------------------------------------------------------------------


def random_qcow2(path: Path, mib: int) -> Path:
    """A qcow2 whose clusters hold random data (incompressible, like a compressed image)."""
    if path.exists():
        return path
    raw = path.with_suffix(".raw")
    with open(raw, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MIB))
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(path)],
                   check=True)
    raw.unlink()
    return path


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(8 * MIB):
            pass


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MIB):
            h.update(chunk)
    return h.hexdigest()


# --- build: kib vs packer ------------------------------------------------------------------------


def build_user_data(user: str, pubkey: str) -> str:
    # The same cloud-config shape as kib's own seed, so both guests do the same first boot.
    doc = {"users": [{"name": user, "sudo": "ALL=(ALL) NOPASSWD:ALL", "lock_passwd": True,
                      "shell": "/bin/bash", "ssh_authorized_keys": [pubkey.strip()]}],
           "ssh_pwauth": False, "disable_root": True}
    return "#cloud-config\n" + json.dumps(doc, indent=2) + "\n"


def kib_build_config(d: Path, accel: str, fixture_sum: str) -> Path:
    config = d / "kib.toml"
    config.write_text(f"""[base]
image = "{FIXTURE}"
checksum = "sha256:{fixture_sum}"
[kubernetes]
version = "1.37"
[vm]
cpus = 2
memory_mib = 2048
disk_size = "2G"
accel = "{accel}"
network = "isolated"
boot_timeout = "15m"
shutdown_timeout = "5m"
[output]
dir = "out"
name = "bench"
format = "qcow2"
compression = "zstd"
[[provisioner]]
type = "shell"
inline = ["{PROVISION}"]
""")
    return config


def packer_template(d: Path, accel: str, fixture_sum: str, key: Path) -> Path:
    seed = d / "seed"
    seed.mkdir()
    (seed / "user-data").write_text(build_user_data("packer", key.with_suffix(".pub").read_text()))
    (seed / "meta-data").write_text("instance-id: bench-packer\nlocal-hostname: bench\n")
    # The NoCloud seed as an ISO on a virtio disk. Packer's own `cd_files` attaches an IDE
    # CD-ROM, which the fixture's cloud-init does not see in time (measured: ds-identify runs
    # before sr0 appears, cloud-init disables itself and sshd has no host keys). A -drive in
    # qemuargs replaces Packer's default drive line, so the disk is spelled out as Packer
    # writes it (cache=writeback, discard=ignore).
    iso = d / "seed.iso"
    subprocess.run(["genisoimage", "-quiet", "-output", str(iso), "-volid", "cidata", "-joliet", "-rock",
                    str(seed / "user-data"), str(seed / "meta-data")], check=True)
    disk = d / "out" / "bench.qcow2"
    template = {
        "builders": [{
            "type": "qemu",
            "disk_image": True,
            "iso_url": str(FIXTURE),
            "iso_checksum": f"sha256:{fixture_sum}",
            "output_directory": str(d / "out"),
            "vm_name": "bench.qcow2",
            "format": "qcow2",
            # Packer's compressed qcow2 (qemu-img convert -c); zlib is its only choice in 1.6.6.
            "disk_compression": True,
            "disk_size": "2048M",
            "accelerator": accel,
            "cpus": 2,
            "memory": 2048,
            "headless": True,
            "communicator": "ssh",
            "ssh_username": "packer",
            "ssh_private_key_file": str(key),
            "ssh_timeout": "15m",
            "shutdown_command": "sudo shutdown -P now",
            "qemuargs": [
                ["-cpu", "host" if accel == "kvm" else "max"],
                # Isolated like kib's: restrict=on, SSH forwarded on 127.0.0.1 only.
                ["-netdev", "user,id=user.0,restrict=on,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22"],
                ["-serial", f"file:{d / 'serial.log'}"],
                ["-drive", f"file={disk},if=virtio,cache=writeback,discard=ignore,format=qcow2"],
                ["-drive", f"file={iso},if=virtio,format=raw,readonly=on"],
            ],
        }],
        "provisioners": [{"type": "shell", "inline": [PROVISION]}],
    }
    path = d / "packer.json"
    path.write_text(json.dumps(template, indent=2))
    return path


def kib_build_round(kib: str, d: Path, accel: str, fixture_sum: str, cache: Path) -> dict:
    config = kib_build_config(d, accel, fixture_sum)
    with SerialWatch(d / "out", ".kib-build-*/serial.log") as watch:
        run = timed([kib, "build", "--config", str(config), "--cache-dir", str(cache), "--no-progress"],
                    env={"KIB_NO_PROGRESS": "1"}, log=d / "kib.log")
    manifest = json.loads((d / "out" / "build-manifest.json").read_text())
    st = manifest["stage_seconds"]
    out = d / "out" / manifest["output"]["file"]
    return {"wall": run.wall, "kernel_start": watch.kernel_start(), "guest_boot": watch.guest_boot(),
            "boot_to_ssh": st.get("boot"), "provision": st.get("provision"),
            "shutdown": st.get("shutdown"), "export": st.get("export"),
            "output_mib": out.stat().st_size / MIB}


def packer_round(d: Path, accel: str, fixture_sum: str, key: Path) -> dict:
    template = packer_template(d, accel, fixture_sum, key)
    with SerialWatch(d, "serial.log") as watch:
        run = timed(["packer", "build", "-color=false", str(template)],
                    env={"PACKER_CACHE_DIR": str(d / "packer_cache"), "CHECKPOINT_DISABLE": "1"},
                    cwd=d, log=d / "packer.log")
    def at(p: str) -> float | None:
        return run.first(p)
    vm_start, ssh = at(r"Starting VM"), at(r"Connected to SSH")
    prov, halt = at(r"Provisioning with shell script"), at(r"Gracefully halting")
    conv, done = at(r"Converting hard drive"), at(r"Build '.*' finished")
    end = done if done is not None else run.wall
    return {"wall": run.wall, "kernel_start": watch.kernel_start(), "guest_boot": watch.guest_boot(),
            "boot_to_ssh": ssh - vm_start if ssh and vm_start else None,
            "provision": halt - prov if halt and prov else None,
            "shutdown": conv - halt if conv and halt else None,
            "export": end - conv if conv else None,
            "output_mib": (d / "out" / "bench.qcow2").stat().st_size / MIB}


STAGES = ("wall", "kernel_start", "guest_boot", "overhead", "overhead_no_firmware", "boot_to_ssh", "provision",
          "shutdown", "export", "output_mib")


def bench_build(args, kib: str, work: Path, results: dict) -> None:
    need("packer", "qemu-system-x86_64", "qemu-img", "ssh-keygen", "genisoimage")
    if not FIXTURE.exists():
        raise BenchError(f"the fixture base image {FIXTURE} is missing",
                         "build it with `sudo tests/fixtures/base-image.sh` (about 2-5 minutes)")
    fixture_sum = sha256_of(FIXTURE)
    accel = results["machine"]["accel"]
    key = work / "packer_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    if args.smoke:
        d = work / "packer-validate"
        d.mkdir()
        subprocess.run(["packer", "validate", str(packer_template(d, accel, fixture_sum, key))],
                       check=True, stdout=subprocess.DEVNULL, env={**os.environ, "CHECKPOINT_DISABLE": "1"})
        kib_build_config(d, accel, fixture_sum)
        say("build: --smoke boots no VM; the Packer template validated")
        results["build"] = {"skipped": "smoke run: no VM booted"}
        return
    sides: dict[str, list[dict]] = {"kib": [], "packer": []}
    for r in range(args.rounds):
        order = ["kib", "packer"] if r % 2 == 0 else ["packer", "kib"]
        for side in order:
            d = work / f"build-{side}-{r}"
            d.mkdir()
            say(f"build round {r + 1}/{args.rounds}: {side} ...")
            if side == "kib":
                res = kib_build_round(kib, d, accel, fixture_sum, work / "kib-cache")
            else:
                res = packer_round(d, accel, fixture_sum, key)
            if res["guest_boot"] is not None:
                res["overhead"] = res["wall"] - res["guest_boot"]
                # Firmware + GRUB (tool start to the kernel's first line) is the same work for
                # both tools too; what is left is each tool's own cost.
                if res["kernel_start"] is not None:
                    res["overhead_no_firmware"] = res["overhead"] - res["kernel_start"]
            say(f"  {side}: {res['wall']:.1f} s wall, guest boot {fmt_s(res['guest_boot']).strip()}")
            sides[side].append(res)
            shutil.rmtree(d / "out", ignore_errors=True)
    out = {}
    for side, runs in sides.items():
        out[side] = {k: summary([x[k] for x in runs if x.get(k) is not None])
                     for k in STAGES if any(x.get(k) is not None for x in runs)}
    k_over, p_over = med(out["kib"], "overhead"), med(out["packer"], "overhead")
    out["ratio_wall"] = med(out["kib"], "wall") / med(out["packer"], "wall")
    out["ratio_overhead"] = k_over / p_over if k_over and p_over else None
    k_nf, p_nf = med(out["kib"], "overhead_no_firmware"), med(out["packer"], "overhead_no_firmware")
    out["ratio_overhead_no_firmware"] = k_nf / p_nf if k_nf and p_nf else None
    results["build"] = out


# --- publish: kib vs buildah ---------------------------------------------------------------------


def kib_publish(kib: str, reg: str, repo: str, disk: Path, log: Path, cache: Path) -> Run:
    # The layer cache lives in the work dir: every round pushes to a new repository, where the
    # registry has no blob, so a remembered digest is never trusted and the layer is streamed.
    return timed([kib, "publish", "--image", f"{reg}/{repo}", "--qcow2", str(disk),
                  "--kubernetes-version", "v1.37.1", "--git-dir", str(ROOT),
                  "--tag-immutable", "bench", "--tag-untagged", "bench", "--no-moving-tags",
                  "--no-progress"], env={"KIB_NO_PROGRESS": "1", "XDG_CACHE_HOME": str(cache)}, log=log)


def kib_package_digest(kib: str, disk: Path, work: Path) -> str:
    """The image digest `kib package` computes for the same inputs (a layout on disk, no
    registry): the push must store exactly this digest."""
    out = subprocess.run([kib, "package", "--output", str(work / "layout"), "--qcow2", str(disk),
                          "--kubernetes-version", "v1.37.1", "--git-dir", str(ROOT),
                          "--tag-immutable", "bench", "--tag-untagged", "bench", "--no-moving-tags",
                          "--no-progress"], check=True, capture_output=True, text=True).stdout
    shutil.rmtree(work / "layout", ignore_errors=True)
    return out.strip()


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages: this machine is shared, so every figure says
    how busy it was."""
    return [round(x, 2) for x in os.getloadavg()]


def bench_publish(args, kib: str, work: Path, reg: str, disk: Path, results: dict) -> None:
    need("buildah", "skopeo")
    size_mib = disk.stat().st_size / MIB
    ctx = work / "buildah-ctx"
    ctx.mkdir()
    os.link(disk, ctx / "disk.qcow2")  # same bytes, no copy
    (ctx / "Containerfile").write_text("FROM scratch\nADD --chown=107:107 disk.qcow2 /disk/\n")
    warm(disk)
    kib_runs, bud_runs, push_runs = [], [], []
    for r in range(args.rounds):
        order = ["kib", "buildah"] if r % 2 == 0 else ["buildah", "kib"]
        for side in order:
            say(f"publish round {r + 1}/{args.rounds}: {side} ...")
            if side == "kib":
                run = kib_publish(kib, reg, f"bench/kib-{r}", disk, work / f"kib-publish-{r}.log",
                                  work / "xdg-cache")
                kib_runs.append(run)
                say(f"  kib publish: {run.wall:.1f} s, peak RSS {run.maxrss_kib / 1024:.1f} MiB")
            else:
                store = work / f"buildah-{r}"
                base = ["buildah", "--root", str(store / "root"), "--runroot", str(store / "run")]
                bud = timed(base + ["bud", "--layers=false", "-f", str(ctx / "Containerfile"),
                                    "-t", f"localhost/bench:{r}", str(ctx)], log=work / f"buildah-bud-{r}.log")
                push = timed(base + ["push", "--tls-verify=false", f"localhost/bench:{r}",
                                     f"docker://{reg}/bench/buildah-{r}:bench"], log=work / f"buildah-push-{r}.log")
                bud_runs.append(bud)
                push_runs.append(push)
                say(f"  buildah: build {bud.wall:.1f} s + push {push.wall:.1f} s")
                subprocess.run(base + ["rmi", "--all", "--force"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
                shutil.rmtree(store, ignore_errors=True)
    # Both pushed something real: the manifest is there and its one layer holds the disk.
    for repo in ("bench/kib-0", "bench/buildah-0"):
        raw = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{reg}/{repo}:bench"],
                             check=True, capture_output=True).stdout
        layers = json.loads(raw)["layers"]
        if len(layers) != 1 or layers[0]["size"] < 0.9 * disk.stat().st_size:
            raise BenchError(f"{repo}: unexpected layers {layers}")
    total = [b.wall + p.wall for b, p in zip(bud_runs, push_runs)]
    # The pushed digest is the one `kib package` computes for the same inputs.
    pushed = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{reg}/bench/kib-0:bench"],
                            check=True, capture_output=True, text=True).stdout
    packaged = kib_package_digest(kib, disk, work)
    # A re-publish of the same qcow2 to the same repository: the remembered layer digest,
    # confirmed by a HEAD, means nothing is read or sent.
    again = [kib_publish(kib, reg, "bench/kib-0", disk, work / f"kib-republish-{r}.log", work / "xdg-cache")
             for r in range(args.rounds)]
    out = {
        "qcow2_mib": size_mib,
        "kib": {"wall": summary([r.wall for r in kib_runs]),
                "peak_rss_mib": summary([r.maxrss_kib / 1024 for r in kib_runs])},
        "buildah": {"build": summary([r.wall for r in bud_runs]),
                    "push": summary([r.wall for r in push_runs]),
                    "wall": summary(total),
                    "peak_rss_mib": summary([max(b.maxrss_kib, p.maxrss_kib) / 1024
                                             for b, p in zip(bud_runs, push_runs)])},
        "republish": {"wall": summary([r.wall for r in again])},
        "digest": {"pushed": json.loads(pushed)["Digest"], "package": packaged},
    }
    out["speedup"] = out["buildah"]["wall"]["median"] / out["kib"]["wall"]["median"]
    out["kib_mib_s"] = size_mib / out["kib"]["wall"]["median"]
    results["publish"] = out


def bench_memory(args, kib: str, work: Path, reg: str, publish_disk: Path, results: dict) -> None:
    out = {}
    for mib in args.memory_sizes:
        reuse = mib == args.publish_mib
        disk = publish_disk if reuse else random_qcow2(work / f"mem-{mib}.qcow2", mib)
        say(f"memory: kib publish of a {mib} MiB qcow2 ...")
        runs = [kib_publish(kib, reg, f"bench/mem-{mib}-{r}", disk, work / f"mem-{mib}-{r}.log",
                            work / "xdg-cache")
                for r in range(args.memory_rounds)]
        out[str(mib)] = {"peak_rss_mib": summary([r.maxrss_kib / 1024 for r in runs]),
                         "wall": summary([r.wall for r in runs])}
        if not reuse:
            disk.unlink()
    results["memory"] = out


# --- ceilings ------------------------------------------------------------------------------------


def registry_put(reg: str, disk: Path, digest: str, r: int) -> float:
    """One monolithic blob PUT with curl: what the registry itself can ingest."""
    req = urllib.request.Request(f"http://{reg}/v2/bench/ceiling-{r}/blobs/uploads/", method="POST")
    with urllib.request.urlopen(req) as resp:
        loc = resp.headers["Location"]
    url = loc if loc.startswith("http") else f"http://{reg}{loc}"
    url += ("&" if "?" in url else "?") + f"digest=sha256:{digest}"
    t0 = time.monotonic()
    subprocess.run(["curl", "-sf", "-o", "/dev/null", "-T", str(disk),
                    "-H", "Content-Type: application/octet-stream", "-X", "PUT", url], check=True)
    return time.monotonic() - t0


def bench_ceiling(args, work: Path, reg: str, disk: Path, results: dict) -> None:
    need("openssl", "sha256sum", "gzip", "zstd", "curl")
    size_mib = disk.stat().st_size / MIB
    tools = {
        "read (page cache)": ["cat", str(disk)],
        "openssl dgst -sha256": ["openssl", "dgst", "-sha256", str(disk)],
        "sha256sum": ["sha256sum", str(disk)],
        "gzip -1": ["gzip", "-1", "-c", str(disk)],
        "zstd -3 -T0": ["zstd", "-3", "-T0", "-c", "-q", str(disk)],
    }
    if shutil.which("pigz"):
        tools["pigz -1"] = ["pigz", "-1", "-c", str(disk)]
    warm(disk)
    digest = sha256_of(disk)
    out: dict[str, dict] = {}
    for name, cmd in tools.items():
        samples = []
        for _ in range(args.rounds):
            t0 = time.monotonic()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
            samples.append(time.monotonic() - t0)
        out[name] = {"mib_s": size_mib / statistics.median(samples), "wall": summary(samples)}
    samples = [registry_put(reg, disk, digest, r) for r in range(args.rounds)]
    out["registry blob PUT (curl)"] = {"mib_s": size_mib / statistics.median(samples), "wall": summary(samples)}
    results["ceiling"] = out


# --- report --------------------------------------------------------------------------------------


def goals(results: dict) -> list[tuple[str, str, str]]:
    """The goals of issue #18 (build: #18 item 3), each with its measured value."""
    rows = []
    b = results.get("build", {})
    if b.get("ratio_overhead") is not None:
        v = b["ratio_overhead"]
        rows.append(("build overhead <= 0.5x Packer's", f"{v:.2f}x", "met" if v <= 0.5 else "MISSED"))
    if b.get("ratio_overhead_no_firmware") is not None:
        v = b["ratio_overhead_no_firmware"]
        k = med(b["kib"], "overhead_no_firmware")
        p = med(b["packer"], "overhead_no_firmware")
        rows.append(("build overhead excl. firmware + GRUB <= 0.2x Packer's",
                     f"{v:.2f}x ({k:.1f} vs {p:.1f} s)", "met" if v <= 0.2 else "MISSED"))
    if b.get("ratio_wall") is not None:
        rows.append(("build wall time vs Packer's (info)", f"{b['ratio_wall']:.2f}x", "-"))
    p = results.get("publish")
    if p:
        v = p["speedup"]
        rows.append(("package + push >= 5.5x faster than buildah build + push", f"{v:.1f}x",
                     "met" if v >= 5.5 else "MISSED"))
        c = results.get("ceiling", {}).get("registry blob PUT (curl)")
        if c:
            # One monolithic PUT of the qcow2 with curl: what the registry itself ingests.
            v = p["kib"]["wall"]["median"] / c["wall"]["median"]
            rows.append(("package + push within 1.25x of one blob PUT",
                         f"{v:.2f}x ({p['kib_mib_s']:.0f} vs {c['mib_s']:.0f} MiB/s)",
                         "met" if v <= 1.25 else "MISSED"))
        d = p.get("digest")
        if d:
            same = d["pushed"] == d["package"]
            rows.append(("pushed digest == `kib package` digest (same inputs)",
                         d["pushed"][:19] + "…", "met" if same else "MISSED"))
        if p.get("republish"):
            rows.append(("re-publish of the same qcow2 (info)",
                         f"{p['republish']['wall']['median']:.2f} s", "-"))
    m = results.get("memory")
    if m:
        for size, x in m.items():
            peak = x["peak_rss_mib"]["median"]
            label = f"{int(size) // 1024} GiB" if int(size) >= 1024 else f"{size} MiB"
            rows.append((f"kib publish peak RSS <= 64 MiB at {label}", f"{peak:.1f} MiB",
                         "met" if peak <= 64 else "MISSED"))
    return rows


def render(results: dict) -> str:
    parts = []
    mach = results["machine"]
    parts.append(f"{results['date']} · {mach['cores']} cores, {mach['memory_gib']} GiB, {mach['os']}, "
                 f"guests under {mach['accel'].upper()} ({mach['accel_reason']}) · "
                 f"{results['rounds']} rounds · `{results['command']}` · "
                 f"load (1/5/15 min) {results.get('load', {}).get('start')} at start, "
                 f"{results.get('load', {}).get('end')} at end")
    b = results.get("build")
    if b and "kib" in b:
        rows = []
        for k in STAGES:
            kv, pv = med(b["kib"], k), med(b["packer"], k)
            unit = (lambda v: "-" if v is None else f"{v:.1f} MiB") if k == "output_mib" else fmt_s
            kmin = b["kib"].get(k, {}).get("min")
            pmin = b["packer"].get(k, {}).get("min")
            rows.append((k.replace("_", " "), f"{unit(kv)} (min {unit(kmin).strip()})",
                         f"{unit(pv)} (min {unit(pmin).strip()})",
                         f"{kv / pv:.2f}x" if kv and pv else "-"))
        when = f" (measured {b['measured']}, not rerun)" if b.get("measured") else ""
        parts.append(f"Build (median, min): kib vs Packer 1.6.6{when}\n\n"
                     + table(rows, ("stage", "kib", "Packer", "kib/Packer")))
    elif b:
        parts.append(f"Build: {b.get('skipped')}")
    p = results.get("publish")
    if p:
        rows = [("kib publish", fmt_s(p["kib"]["wall"]["median"]), f"{p['kib']['peak_rss_mib']['median']:.1f} MiB"),
                ("buildah build", fmt_s(p["buildah"]["build"]["median"]), "-"),
                ("buildah push", fmt_s(p["buildah"]["push"]["median"]), "-"),
                ("buildah build + push", fmt_s(p["buildah"]["wall"]["median"]),
                 f"{p['buildah']['peak_rss_mib']['median']:.1f} MiB")]
        if p.get("republish"):
            rows.append(("kib publish again (same qcow2)", fmt_s(p["republish"]["wall"]["median"]), "-"))
        parts.append(f"Package + push of a {p['qcow2_mib']:.0f} MiB qcow2 (median): kib is "
                     f"{p['speedup']:.1f}x faster\n\n" + table(rows, ("step", "wall", "peak RSS")))
    m = results.get("memory")
    if m:
        rows = [(f"{k} MiB", f"{v['peak_rss_mib']['median']:.1f} MiB", fmt_s(v["wall"]["median"])) for k, v in m.items()]
        parts.append("kib publish peak RSS by disk size\n\n" + table(rows, ("qcow2", "peak RSS", "wall")))
    c = results.get("ceiling")
    if c:
        rows = [(k, f"{v['mib_s']:.0f} MiB/s") for k, v in c.items()]
        parts.append("Ceilings on the same file (median)\n\n" + table(rows, ("what", "throughput")))
    g = goals(results)
    if g:
        parts.append("Goals\n\n" + table(g, ("goal", "measured", "")))
    return "\n\n".join(parts) + "\n"


def keep_earlier(results: dict, out: Path, sections: set[str]) -> None:
    """Sections not run this time keep their figures from the previous results file, marked
    with that run's date, so a partial rerun (`--only publish,memory,ceiling`) never drops the
    build comparison."""
    try:
        old = json.loads(out.read_text())
    except (OSError, ValueError):
        return
    for name in ("build", "publish", "memory", "ceiling"):
        if name in sections or name not in old:
            continue
        section = old[name]
        section.setdefault("measured", old.get("date"))
        if name == "build" and "kib" in section:
            derive_overhead_no_firmware(section)
        results[name] = section


def derive_overhead_no_firmware(build: dict) -> None:
    """Overhead minus firmware + GRUB, per round, for results written before it was recorded
    (both sample lists are in round order)."""
    for side in ("kib", "packer"):
        d = build[side]
        if "overhead_no_firmware" in d or "overhead" not in d or "kernel_start" not in d:
            continue
        over, kern = d["overhead"]["samples"], d["kernel_start"]["samples"]
        if len(over) == len(kern):
            d["overhead_no_firmware"] = summary([o - k for o, k in zip(over, kern)])
    k, p = med(build["kib"], "overhead_no_firmware"), med(build["packer"], "overhead_no_firmware")
    if k and p:
        build["ratio_overhead_no_firmware"] = k / p


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--only", default="build,publish,memory,ceiling",
                    help="comma-separated sections (default: all)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per comparison (default 3)")
    ap.add_argument("--publish-mib", type=int, default=1024, help="qcow2 size for publish/ceiling (default 1024)")
    ap.add_argument("--memory-sizes", default="1024,4096", help="qcow2 sizes in MiB for the memory section")
    ap.add_argument("--memory-rounds", type=int, default=1)
    ap.add_argument("--kib", default=str(ROOT / "target/release/kib"), help="the kib binary (default: target/release/kib)")
    ap.add_argument("--work", help="scratch folder (default: a temp dir under /var/tmp, removed at the end)")
    ap.add_argument("--out", default=str(ROOT / "bench/results.json"), help="where to write the results")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny inputs, 1 round, no VM: keeps the script from rotting (CI)")
    args = ap.parse_args()
    sections = set(args.only.split(","))
    if unknown := sections - {"build", "publish", "memory", "ceiling"}:
        raise BenchError(f"unknown section(s): {', '.join(sorted(unknown))}")
    args.memory_sizes = [int(x) for x in args.memory_sizes.split(",")]
    if args.smoke:
        args.rounds, args.publish_mib, args.memory_sizes = 1, 16, [16, 32]
    if not os.access(args.kib, os.X_OK):
        raise BenchError(f"no kib binary at {args.kib}", "build it: `cargo build --release` (or pass --kib PATH)")
    need("qemu-img")
    if not os.access("/usr/bin/time", os.X_OK):
        raise BenchError("GNU time (/usr/bin/time) is missing: it measures peak RSS",
                         "install it with `sudo scripts/setup-host.sh` (Debian package `time`)")
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python3 bench/bench.py " + " ".join(sys.argv[1:]),
        "git_revision": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                       capture_output=True, text=True).stdout.strip() or None,
        "kib": subprocess.run([args.kib, "--version"], capture_output=True, text=True).stdout.strip(),
        "machine": machine(), "rounds": args.rounds, "smoke": args.smoke,
        "load": {"start": load()},
    }
    base = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="kib-bench-", dir="/var/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        if "build" in sections:
            results["load"]["build"] = load()
            bench_build(args, args.kib, base, results)
        if sections & {"publish", "memory", "ceiling"}:
            with registry(base) as reg:
                disk = random_qcow2(base / "publish.qcow2", args.publish_mib)
                if "publish" in sections:
                    results["load"]["publish"] = load()
                    bench_publish(args, args.kib, base, reg, disk, results)
                if "ceiling" in sections:
                    results["load"]["ceiling"] = load()
                    bench_ceiling(args, base, reg, disk, results)
                if "memory" in sections:
                    results["load"]["memory"] = load()
                    bench_memory(args, args.kib, base, reg, disk, results)
    finally:
        if not args.work:
            shutil.rmtree(base, ignore_errors=True)
    results["load"]["end"] = load()
    keep_earlier(results, Path(args.out), sections)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(render(results), end="")
    say(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
