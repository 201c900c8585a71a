#!/usr/bin/env bash
# The test command (README): formatting, lints, the playbook checks, then every test,
# including the ones that boot real VMs (QEMU; KVM where it can boot a guest, TCG otherwise)
# and the ones against a real local registry. Needs the host set up by scripts/setup-host.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s\n' "$*" >&2; }

work=$(mktemp -d)
fixture_pid=
# On an early failure, let a running fixture build finish rather than leave it half-done.
trap '[ -n "$fixture_pid" ] && wait "$fixture_pid" 2>/dev/null; rm -rf "$work"' EXIT

# The fixture base image is built (or found current) in the background while the lints and
# the compiler run: on a fresh machine it is a minute or two of mostly downloading and
# unpacking that need not wait for them.
fixture_start=$(date +%s)
bash tests/fixtures/base-image.sh >"$work/fixture.log" 2>&1 &
fixture_pid=$!

step "actionlint"
actionlint .github/workflows/*.yml

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "cargo deny: licenses, duplicate versions, sources (deny.toml)"
cargo deny --locked check bans licenses sources

step "cargo deny: advisories (RustSec database, fetched from github.com)"
# The database is a git clone from GitHub. Where GitHub is unreachable (the offline build
# hosts) advisories cannot be checked: say so loudly rather than pass on an old or empty
# copy. Where the database must be checked (the GitHub/Forgejo workflows set
# KIB_REQUIRE_ADVISORIES=1) an unreachable database fails the run. `CI` alone does not decide
# it: the offline CI these hosts run has no route to GitHub at all.
if cargo deny fetch db; then
  cargo deny --locked check advisories
elif [ "${KIB_REQUIRE_ADVISORIES:-0}" = 1 ]; then
  echo "test.sh: the RustSec advisory database could not be fetched" >&2
  exit 1
else
  echo "test.sh: WARNING: advisories NOT CHECKED (the RustSec advisory database on github.com is unreachable from this host)" >&2
fi

step "shellcheck"
shellcheck scripts/*.sh tests/fixtures/*.sh .ci/run vm/src/scripts/*.sh conformance/src/scripts/*.sh

if [ -d playbook/tests ]; then
  step "playbook: ansible-lint, syntax-check, template rendering, dnf paths (offline)"
  bash playbook/tests/lint.sh
  bash playbook/tests/render.sh
  bash playbook/tests/dnf.sh
fi

step "fixture base image (built in the background since the start)"
if ! wait "$fixture_pid"; then
  cat "$work/fixture.log" >&2
  echo "test.sh: the fixture base image could not be built (log above)" >&2
  exit 1
fi
tail -n 1 "$work/fixture.log" >&2
echo "fixture ready $(( $(date +%s) - fixture_start ))s after the start" >&2

step "cargo test (unit, integration, VM and registry tests)"
# VM tests share two cores: one test at a time inside each test binary.
cargo test --workspace --all-features -- --test-threads=1

step "bench smoke run (tiny inputs, no VM: keeps bench/bench.py from rotting)"
# target/debug/kib is the binary the tests above just built.
python3 bench/bench.py --smoke --kib target/debug/kib --out "$work/results.json" >/dev/null
