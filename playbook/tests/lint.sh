#!/usr/bin/env bash
# ansible-lint (production profile, offline) and ansible-playbook --syntax-check for kib's
# playbook. Exits non-zero on any finding.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

export ANSIBLE_NOCOLOR=1
status=0

echo "== ansible-playbook --syntax-check"
for pb in site.yml upgrade.yml tests/render.yml tests/dnf.yml; do
  ansible-playbook --syntax-check -i localhost, "$pb" || status=1
done
ansible-playbook --syntax-check -i localhost, site.yml --extra-vars @tests/fixture-vars.yml || status=1

echo "== ansible-lint --profile production --offline"
ansible-lint --profile production --offline --strict -c .ansible-lint \
  site.yml upgrade.yml tests/render.yml tests/dnf.yml roles/ group_vars/all.yml tests/fixture-vars.yml tests/dnf-vars.yml || status=1

if [ "$status" -ne 0 ]; then
  echo "lint.sh: FAILED" >&2
fi
exit "$status"
