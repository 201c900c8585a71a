#!/usr/bin/env bash
# Renders every Kubernetes-facing template with the role defaults (tests/render.yml) and parses
# the result (tests/render_check.py). Exits non-zero on any failure.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$(mktemp -d -t kib-render.XXXXXX)"
trap 'rm -rf "$dir"' EXIT

export ANSIBLE_NOCOLOR=1
KIB_RENDER_DIR="$dir" ansible-playbook -i localhost, "$here/tests/render.yml" >"$dir.log" 2>&1 || {
  cat "$dir.log" >&2
  rm -f "$dir.log"
  echo "render.sh: rendering failed" >&2
  exit 1
}
rm -f "$dir.log"
python3 "$here/tests/render_check.py" "$dir"
