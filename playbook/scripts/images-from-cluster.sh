#!/usr/bin/env bash
# Regenerates playbook/files/images.json from a running cluster: every image its pods use
# (containers, init and ephemeral containers), minus the control-plane images that kib computes
# with `kubeadm config images list` at build time (kube-*, etcd, coredns, pause).
#
# Usage: KUBECONFIG=... playbook/scripts/images-from-cluster.sh [-n NAMESPACE]... > playbook/files/images.json
#   -n NAMESPACE  only pods of these namespaces (default: all), e.g. -n calico-system -n tigera-operator
# Needs kubectl and python3.
set -euo pipefail

namespaces=()
while getopts "n:h" opt; do
  case "$opt" in
    n) namespaces+=("$OPTARG") ;;
    *) sed -n '2,9p' "$0" >&2; exit 2 ;;
  esac
done

collect() {
  kubectl get pods "$@" -o jsonpath='{range .items[*]}{range .spec.initContainers[*]}{.image}{"\n"}{end}{range .spec.containers[*]}{.image}{"\n"}{end}{range .spec.ephemeralContainers[*]}{.image}{"\n"}{end}{end}'
}

{
  if [ "${#namespaces[@]}" -eq 0 ]; then
    collect --all-namespaces
  else
    for ns in "${namespaces[@]}"; do collect --namespace "$ns"; done
  fi
} | python3 -c '
import json, re, sys
control_plane = re.compile(r"(^|/)(kube-apiserver|kube-controller-manager|kube-scheduler|kube-proxy|etcd|coredns|pause):")
images = sorted({l.strip() for l in sys.stdin if l.strip() and not control_plane.search(l.strip())})
doc = {
    "comment": "Extra images kib pre-pulls into the k8s.io namespace of containerd, besides the control-plane "
               "images computed with kubeadm config images list. Regenerate from a running cluster with "
               "playbook/scripts/images-from-cluster.sh.",
    "images": images,
}
json.dump(doc, sys.stdout, indent=2)
sys.stdout.write("\n")
'
