# shellcheck shell=bash
set -eu
if [ -f "$3" ]; then kill "$(cat "$3")" 2>/dev/null || true; rm -f "$3"; fi
vm=$(kubectl -n "$1" get machines -l cluster.x-k8s.io/control-plane -o jsonpath='{.items[0].spec.infrastructureRef.name}')
[ -n "$vm" ] || { echo "no control-plane machine in namespace $1" >&2; exit 1; }
virtctl port-forward -n "$1" --address 127.0.0.1 "vm/$vm" "$2:6443" </dev/null >"$4" 2>&1 &
echo $! > "$3"
for _ in $(seq 60); do
  if kubectl --kubeconfig "$5" --server "https://127.0.0.1:$2" --insecure-skip-tls-verify get --raw /readyz >/dev/null 2>&1; then exit 0; fi
  kill -0 "$(cat "$3")" 2>/dev/null || break
  sleep 2
done
echo "the workload API server did not answer on 127.0.0.1:$2 through vm/$vm" >&2
tail -n 8 "$4" >&2
exit 1
