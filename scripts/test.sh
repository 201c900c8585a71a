#!/usr/bin/env bash
# The test command (README): formatting, lints, the playbook checks, then every test,
# including the ones that boot real VMs (QEMU; KVM where it can boot a guest, TCG otherwise)
# and the ones against a real local registry. Needs the host set up by scripts/setup-host.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s\n' "$*" >&2; }

step "actionlint"
actionlint .github/workflows/*.yml

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "shellcheck"
shellcheck scripts/*.sh tests/fixtures/*.sh .ci/run

if [ -d playbook/tests ]; then
  step "playbook: ansible-lint, syntax-check, template rendering"
  bash playbook/tests/lint.sh
  bash playbook/tests/render.sh
fi

step "fixture base image (cached)"
start=$(date +%s)
bash tests/fixtures/base-image.sh
echo "fixture ready in $(( $(date +%s) - start ))s" >&2

step "cargo test (unit, integration, VM and registry tests)"
# VM tests share two cores: one test at a time inside each test binary.
cargo test --workspace --all-features -- --test-threads=1

step "bench smoke run (tiny inputs, no VM: keeps bench/bench.py from rotting)"
# target/debug/kib is the binary the tests above just built.
smoke=$(mktemp -d)
trap 'rm -rf "$smoke"' EXIT
python3 bench/bench.py --smoke --kib target/debug/kib --out "$smoke/results.json" >/dev/null
