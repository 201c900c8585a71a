#!/usr/bin/env bash
# Installs everything kib needs on a Debian 12 (bookworm) or Ubuntu host: QEMU, the tools the
# tests use as independent checkers (skopeo, openssl, a local OCI registry), the tools that
# build the offline fixture image, and ansible-core. One script for the README, `.ci/run` and
# the release workflow, so that the three cannot drift apart.
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

. /etc/os-release
apt_target=()
if [ "${ID:-}" = debian ] && [ "${VERSION_CODENAME:-}" = bookworm ]; then
  # bookworm's qemu-system-x86 7.2 conflicts with the qemu-utils 10.0 these hosts carry from
  # bookworm-backports, and 7.2 aborts on `-cpu host`: take QEMU from backports.
  list=/etc/apt/sources.list.d/bookworm-backports.list
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" >"$list"
  fi
  apt_target=(-t bookworm-backports)
fi

apt-get update -q
# QEMU and its firmware from one suite (backports on bookworm: seabios must match too).
apt-get install -y -q --no-install-recommends "${apt_target[@]}" \
  qemu-system-x86 qemu-utils seabios ipxe-qemu ovmf
pkgs=(openssh-client python3 python3-pip python3-venv ca-certificates)
if [ "$test_tools" = 1 ]; then
  pkgs+=(
    # the fixture base image (tests/fixtures/base-image.sh)
    mmdebstrap e2fsprogs fdisk grub-pc-bin grub2-common
    # independent checkers and the local registry the tests start on 127.0.0.1
    skopeo openssl docker-registry apache2-utils curl jq shellcheck
  )
fi
apt-get install -y -q --no-install-recommends "${pkgs[@]}"

# ansible-core from PyPI (Debian's is too old for the playbook's lint profile).
pip_args=(--quiet --disable-pip-version-check)
python3 -m pip install "${pip_args[@]}" 'ansible-core>=2.16,<2.19' \
  $( [ "$test_tools" = 1 ] && echo 'ansible-lint>=24' 'yamllint' )

echo "setup-host.sh: done"
