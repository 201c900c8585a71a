#!/usr/bin/env bash
# The tools of `kib conformance --profile cluster` (conformance/README.md), for the release
# workflow and for people running the cluster profile by hand (docs/RELEASING.md).
#
# Usage: sudo scripts/cluster-tools.sh install   # kind, kubectl, clusterctl, virtctl, Docker
#        scripts/cluster-tools.sh logs DIR        # collect the kept cluster's logs, delete it
#
# `install` puts kind, kubectl, clusterctl and virtctl into /usr/local/bin at the versions
# kib's cluster profile pins (`kib_conformance::cluster::Versions`; tests/cli/release.rs
# checks they agree), Docker when no container engine is there, and the inotify limits a kind
# cluster running KubeVirt needs. Needs internet (GitHub releases, dl.k8s.io). Idempotent.
#
# `logs DIR` is for after `kib conformance --profile cluster --keep`: it writes the management
# cluster's objects, events, the node VMs' serial consoles and `kind export logs` to DIR, then
# deletes the kind cluster (a next run's port-forward step stops the old forward by its pid
# file). No Secret is written.
set -euo pipefail

# The kind cluster and the workload namespace kib's cluster profile creates
# (`ClusterSpec::new`: kind_name, cluster_name).
KIND_CLUSTER=kib-conformance
WORKLOAD_NAMESPACE=kib-wl

logs() {
  local dir=$1
  mkdir -p "$dir"
  if ! kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
    echo "cluster-tools.sh: no kind cluster $KIND_CLUSTER (nothing to collect)"
    return 0
  fi
  local kinds=(nodes pods pvc datavolumes virtualmachines virtualmachineinstances
    clusters.cluster.x-k8s.io machines.cluster.x-k8s.io kubeadmcontrolplanes kubeadmconfigs
    kubevirtclusters kubevirtmachines)
  for k in "${kinds[@]}"; do
    echo "### $k"
    kubectl get "$k" -A -o wide 2>&1 || true
  done >"$dir/objects.txt"
  for k in datavolumes virtualmachineinstances machines.cluster.x-k8s.io kubevirtmachines \
    kubeadmcontrolplanes; do
    kubectl -n "$WORKLOAD_NAMESPACE" get "$k" -o yaml >"$dir/$k.yaml" 2>&1 || true
  done
  kubectl get events -A --sort-by=.lastTimestamp >"$dir/events.txt" 2>&1 || true
  # KubeVirt logs each VM's serial console in the virt-launcher pod's guest-console-log.
  local pod
  for pod in $(kubectl -n "$WORKLOAD_NAMESPACE" get pods -l kubevirt.io=virt-launcher -o name 2>/dev/null); do
    kubectl -n "$WORKLOAD_NAMESPACE" logs "$pod" -c guest-console-log \
      >"$dir/${pod#pod/}.console.log" 2>&1 || true
  done
  kind export logs "$dir/kind" --name "$KIND_CLUSTER" >/dev/null 2>&1 || true
  kind delete cluster --name "$KIND_CLUSTER"
}

case "${1:-}" in
  install) ;;
  logs)
    [ $# -eq 2 ] || { echo "usage: $0 logs DIR" >&2; exit 2; }
    logs "$2"
    exit 0
    ;;
  *)
    echo "usage: sudo $0 install | $0 logs DIR" >&2
    exit 2
    ;;
esac

KIND_VERSION=v0.32.0
# kubectl matching the kind node image (kindest/node:v1.36.1).
KUBECTL_VERSION=v1.36.1
CLUSTERCTL_VERSION=v1.14.0
VIRTCTL_VERSION=v1.9.0

if [ "$(id -u)" -ne 0 ]; then
  echo "cluster-tools.sh: run as root (sudo $0 install)" >&2
  exit 2
fi
bin=/usr/local/bin
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

fetch() { curl -fsSL --retry 5 --retry-delay 5 -o "$2" "$1"; }

# install NAME VERSION URL [SHA256-URL]: upstream publishes checksums for kind and kubectl,
# which are checked; for clusterctl and virtctl (no checksum files in their releases) the
# SHA-256 is printed so that a run's log records what was used.
install_tool() {
  local name=$1 version=$2 url=$3 sums=${4:-}
  if [ -x "$bin/$name" ] && [ "$(cat "/usr/local/share/kib/$name.version" 2>/dev/null)" = "$version" ]; then
    echo "cluster-tools.sh: $name $version already in $bin"
    return 0
  fi
  fetch "$url" "$work/$name"
  local sum
  sum="$(sha256sum "$work/$name" | cut -d' ' -f1)"
  if [ -n "$sums" ]; then
    fetch "$sums" "$work/$name.sha256"
    if [ "$(cut -d' ' -f1 "$work/$name.sha256")" != "$sum" ]; then
      echo "cluster-tools.sh: $url does not match $sums" >&2
      exit 1
    fi
  fi
  install -m 0755 "$work/$name" "$bin/$name"
  mkdir -p /usr/local/share/kib
  echo "$version" >"/usr/local/share/kib/$name.version"
  echo "cluster-tools.sh: $name $version (sha256 $sum) installed to $bin"
}

install_tool kind "$KIND_VERSION" \
  "https://github.com/kubernetes-sigs/kind/releases/download/$KIND_VERSION/kind-linux-amd64" \
  "https://github.com/kubernetes-sigs/kind/releases/download/$KIND_VERSION/kind-linux-amd64.sha256sum"
install_tool kubectl "$KUBECTL_VERSION" \
  "https://dl.k8s.io/release/$KUBECTL_VERSION/bin/linux/amd64/kubectl" \
  "https://dl.k8s.io/release/$KUBECTL_VERSION/bin/linux/amd64/kubectl.sha256"
install_tool clusterctl "$CLUSTERCTL_VERSION" \
  "https://github.com/kubernetes-sigs/cluster-api/releases/download/$CLUSTERCTL_VERSION/clusterctl-linux-amd64"
install_tool virtctl "$VIRTCTL_VERSION" \
  "https://github.com/kubevirt/kubevirt/releases/download/$VIRTCTL_VERSION/virtctl-$VIRTCTL_VERSION-linux-amd64"

# kind needs a container engine; GitHub's runners have Docker, a Debian host may not.
if ! command -v docker >/dev/null && ! command -v podman >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker.io
fi

# KubeVirt's and CDI's controllers in one kind node exhaust the default inotify instances
# ("too many open files" in pods); kind's known-issues page gives these values.
sysctl -q -w fs.inotify.max_user_watches=524288 fs.inotify.max_user_instances=512

echo "cluster-tools.sh: done"
