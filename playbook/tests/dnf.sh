#!/usr/bin/env bash
# Offline proof of the playbook's dnf paths: real dnf (Debian's dnf 4, rpm, createrepo_c, gpg)
# against a local repository shaped like pkgs.k8s.io (core:/stable:/v1.NN/rpm/), served on
# 127.0.0.1 by this script and stopped by it.
# - metadata signed (repo_gpgcheck=1: repodata/repomd.xml.asc, key at repodata/repomd.xml.key),
# - packages signed (gpgcheck=1: rpmsign), several patch versions per minor,
# - the repos and kubernetes roles' install tasks run with ansible-playbook (tests/dnf.yml,
#   connection local) into a private installroot per scenario:
#     1.37      -> the newest patch (1.37.10, not 1.37.9: numeric order), newest cri-tools/cni
#     1.36.3    -> exactly that patch from the v1.36 repository, not its newest
#     1.37.7    -> the role's "does not offer the requested versions" error
#     1.39      -> a minor without a repository: the role's "could not be read" error
#     1.35      -> a repository whose repomd.xml does not match its signature: same error
# The packages are TEST STAND-INS: empty, summary "kib test stand-in, not Kubernetes", files
# under /usr/share/kib-test-standin/. They exist only inside this script's temporary directory.
# Nothing on the host changes: HOME, GNUPGHOME and every rpmdb/cache/repo dir are temporary
# (Debian's rpm keeps its database under $HOME/.rpmdb).
# Exits non-zero on any failed check. Needs: dnf rpm createrepo-c gnupg (scripts/setup-host.sh).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

for tool in dnf rpm rpmbuild rpmsign createrepo_c gpg ansible-playbook python3; do
  if ! command -v "$tool" >/dev/null; then
    echo "dnf.sh: $tool is missing: run scripts/setup-host.sh (apt: dnf rpm createrepo-c gnupg)" >&2
    exit 2
  fi
done

work="$(mktemp -d -t kib-dnf.XXXXXX)"
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

export HOME="$work/home" GNUPGHOME="$work/gnupg" ANSIBLE_NOCOLOR=1 ANSIBLE_PIPELINING=1 ANSIBLE_ROLES_PATH="$here/roles"
export ANSIBLE_LOCAL_TEMP="$work/ansible-tmp" ANSIBLE_REMOTE_TEMP="$work/ansible-tmp"
mkdir -p "$HOME" "$work/srv" "$work/build" "$work/bin"
mkdir -m 0700 "$GNUPGHOME"

failed=0
fail() { echo "dnf.sh: FAIL: $*" >&2; failed=$((failed + 1)); }

# --- the signing key and the stand-in packages ---------------------------------------------------
gpg --batch --quiet --passphrase '' --quick-gen-key 'kib dnf test stand-in key <kib-test@invalid>' \
  rsa3072 sign never 2>/dev/null

cat >"$work/build/stand-in.spec" <<'EOF'
Name: %{standin_name}
Version: %{standin_version}
Release: 150500.1.1
Summary: kib test stand-in, not Kubernetes
License: Apache-2.0
BuildArch: noarch
URL: https://invalid.example/kib-test-stand-in
%description
kib test stand-in, not Kubernetes: an empty package named like a pkgs.k8s.io package,
built by kib's playbook/tests/dnf.sh to exercise dnf offline. Never install it on a node.
%install
mkdir -p %{buildroot}/usr/share/kib-test-standin
echo "kib test stand-in, not Kubernetes" >%{buildroot}/usr/share/kib-test-standin/%{name}-%{version}
%files
/usr/share/kib-test-standin/%{name}-%{version}
EOF

# repo minor -> "name:version ..." (v1.35 only has to exist, with metadata that fails its
# signature: it reuses v1.36 packages) (pkgs.k8s.io carries cri-tools and kubernetes-cni in every
# Kubernetes minor's repository).
declare -A repo_packages=(
  [1.37]="kubeadm:1.37.0 kubeadm:1.37.1 kubeadm:1.37.9 kubeadm:1.37.10
          kubelet:1.37.0 kubelet:1.37.1 kubelet:1.37.9 kubelet:1.37.10
          kubectl:1.37.0 kubectl:1.37.1 kubectl:1.37.9 kubectl:1.37.10
          cri-tools:1.37.0 cri-tools:1.37.1 kubernetes-cni:1.7.1 kubernetes-cni:1.8.0"
  [1.36]="kubeadm:1.36.3 kubeadm:1.36.4 kubelet:1.36.3 kubelet:1.36.4 kubectl:1.36.3 kubectl:1.36.4
          cri-tools:1.36.0 cri-tools:1.36.1 kubernetes-cni:1.7.1"
  [1.35]="kubeadm:1.36.3 kubelet:1.36.3 kubectl:1.36.3 cri-tools:1.36.0 kubernetes-cni:1.7.1"
)
built="$work/build/rpms"
# One rpmbuild per name:version, two at a time. _dbpath: rpmbuild must not open (and create) an
# rpmdb outside the work dir.
# shellcheck disable=SC2016 # the single-quoted script gets its values as "$1".. from xargs
# shellcheck disable=SC2068 # split the space-separated lists on purpose
printf '%s\n' ${repo_packages[@]} | sort -u |
  xargs -P 2 -I '{}' sh -c 'pv="$1"; exec rpmbuild -bb --quiet --nodeps \
      --define "_topdir $2/top-${pv}" --define "_rpmdir $3" --define "_dbpath $2/rpmdb" \
      --define "standin_name ${pv%%:*}" --define "standin_version ${pv#*:}" "$2/stand-in.spec"' \
    rpmbuild '{}' "$work/build" "$built" >/dev/null 2>"$work/build/rpmbuild.log" || {
  cat "$work/build/rpmbuild.log" >&2
  echo "dnf.sh: rpmbuild failed" >&2
  exit 1
}
# Debian's rpm macros name /usr/bin/gpg2, which Debian does not ship.
rpmsign --addsign --define "__gpg $(command -v gpg)" --define "_gpg_name kib dnf test stand-in key" \
  --define "_dbpath $work/build/rpmdb" "$built"/noarch/*.rpm >/dev/null 2>"$work/build/rpmsign.log" || {
  cat "$work/build/rpmsign.log" >&2
  exit 1
}

for minor in "${!repo_packages[@]}"; do
  repo="$work/srv/core:/stable:/v$minor/rpm"
  mkdir -p "$repo"
  for pv in ${repo_packages[$minor]}; do
    cp "$built/noarch/${pv%%:*}-${pv#*:}-150500.1.1.noarch.rpm" "$repo/"
  done
  createrepo_c --quiet "$repo"
  gpg --batch --quiet --armor --detach-sign "$repo/repodata/repomd.xml"
  gpg --batch --quiet --armor --export >"$repo/repodata/repomd.xml.key"
done
# v1.35: metadata changed after it was signed (a tampered or half-synced mirror).
echo "<!-- changed after signing -->" >>"$work/srv/core:/stable:/v1.35/rpm/repodata/repomd.xml"

# --- the HTTP server on 127.0.0.1 ------------------------------------------------------------------
python3 - "$work/srv" "$work/port" <<'EOF' 2>"$work/http.log" &
import functools, http.server, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
with open(sys.argv[2] + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os; os.rename(sys.argv[2] + ".tmp", sys.argv[2])
server.serve_forever()
EOF
server_pid=$!
for _ in $(seq 50); do [ -s "$work/port" ] && break; sleep 0.1; done
[ -s "$work/port" ] || { cat "$work/http.log" >&2; echo "dnf.sh: the HTTP server did not start" >&2; exit 1; }
KIB_DNF_TEST_URL="http://127.0.0.1:$(cat "$work/port")"
export KIB_DNF_TEST_URL

# rpm_key has no root option: this labelled shim (first on PATH for ansible only) points the
# real rpm at the scenario's installroot, so the key lands in the rpmdb dnf then checks
# packages against, as it does on a real build.
cat >"$work/bin/rpm" <<'EOF'
#!/bin/sh
# kib dnf test shim: the real rpm, inside the test's installroot.
exec /usr/bin/rpm --root "$KIB_DNF_TEST_ROOT" "$@"
EOF
chmod 0755 "$work/bin/rpm"

# --- the scenarios -----------------------------------------------------------------------------
# run NAME KUBERNETES_VERSION: runs tests/dnf.yml in a fresh installroot; output in $work/NAME.log.
run() {
  local name="$1" version="$2" root="$work/root-$1"
  mkdir -p "$root/etc/yum.repos.d" "$root/etc/dnf"
  printf '[main]\nreposdir=%s/etc/yum.repos.d\n' "$root" >"$root/etc/dnf/dnf.conf"
  KIB_DNF_TEST_ROOT="$root" PATH="$work/bin:$PATH" \
    ansible-playbook -i localhost, "$here/tests/dnf.yml" -e "kubernetes_version=$version" \
    >"$work/$name.log" 2>&1
}
# installed ROOT: name-version of the five packages, as the root's rpmdb has them.
installed() {
  rpm --root "$1" -q --qf '%{name}-%{version}\n' kubeadm kubelet kubectl cri-tools kubernetes-cni 2>&1 | tr '\n' ' '
}
show() { sed 's/^/    /' "$work/$1.log" >&2; }
expect_installed() { # NAME EXPECTED
  local got
  got="$(installed "$work/root-$1")"
  if [ "$got" != "$2 " ]; then
    fail "$1: installed '$got', expected '$2'"
    return
  fi
  # Every package is signed by the repository's key, which rpm_key put into the root's rpmdb,
  # and is the labelled stand-in.
  rpm --root "$work/root-$1" -q gpg-pubkey --qf '%{summary}\n' | grep -q 'kib dnf test stand-in key' ||
    fail "$1: the repository key is not in the installroot's rpmdb (rpm_key)"
  rpm --root "$work/root-$1" -q --qf '%{name} %{rsaheader:pgpsig}|%{summary}\n' kubeadm kubelet kubectl cri-tools kubernetes-cni |
    while IFS='|' read -r sig summary; do
      case "$sig" in *"Key ID"*) ;; *) echo "dnf.sh: FAIL: $1: unsigned: $sig" >&2; exit 1 ;; esac
      [ "$summary" = "kib test stand-in, not Kubernetes" ] || { echo "dnf.sh: FAIL: $1: not a stand-in: $summary" >&2; exit 1; }
    done || failed=$((failed + 1))
}
# The scenarios run side by side (each in its own installroot), then their outcomes are checked.
declare -A scenario_version=() scenario_rc=()
scenario_pids=()
start() { # NAME VERSION
  scenario_version[$1]="$2"
  run "$1" "$2" &
  scenario_pids+=("$!:$1")
}
t0=$SECONDS
start minor 1.37
start patch 1.36.3
start missing-patch 1.37.7
start missing-minor 1.39
start bad-signature 1.35
for pn in "${scenario_pids[@]}"; do
  rc=0
  wait "${pn%%:*}" || rc=$?
  scenario_rc[${pn#*:}]=$rc
done
echo "dnf.sh: the five scenarios took $((SECONDS - t0))s (setup ${t0}s)"

expect_success() { # NAME EXPECTED
  if [ "${scenario_rc[$1]}" -eq 0 ]; then
    expect_installed "$1" "$2"
    echo "dnf.sh: ok   $1 (${scenario_version[$1]}): $(grep -o 'resolved kubernetes=[^"]*' "$work/$1.log")"
  else
    fail "$1: kubernetes_version=${scenario_version[$1]} failed:"
    show "$1"
  fi
}
expect_failure() { # NAME MESSAGE...
  local name="$1" msg
  shift
  if [ "${scenario_rc[$name]}" -eq 0 ]; then
    fail "$name: kubernetes_version=${scenario_version[$name]} succeeded, expected a failure"
    show "$name"
    return
  fi
  for msg in "$@"; do
    grep -qF -- "$msg" "$work/$name.log" || { fail "$name: the failure does not say '$msg':"; show "$name"; return; }
  done
  echo "dnf.sh: ok   $name (${scenario_version[$name]}) fails as it must: $1"
}

expect_success minor "kubeadm-1.37.10 kubelet-1.37.10 kubectl-1.37.10 cri-tools-1.37.1 kubernetes-cni-1.8.0"
expect_success patch "kubeadm-1.36.3 kubelet-1.36.3 kubectl-1.36.3 cri-tools-1.36.1 kubernetes-cni-1.7.1"
expect_failure missing-patch \
  "pkgs.k8s.io v1.37 does not offer the requested versions" "kubernetes 1.37.7 (has 1.37.0, 1.37.1, 1.37.9, 1.37.10)"
expect_failure missing-minor "The pkgs.k8s.io repository for Kubernetes v1.39" "could not be read"
expect_failure bad-signature \
  "The pkgs.k8s.io repository for Kubernetes v1.35" "could not be read" "GPG signature verification error"

if [ "$failed" -ne 0 ]; then
  echo "dnf.sh: FAILED ($failed)" >&2
  exit 1
fi
echo "dnf.sh: all dnf scenarios passed"
