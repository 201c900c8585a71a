# shellcheck shell=bash
set -eu
mkdir -p "$1"
clusterctl get kubeconfig "$2" -n "$2" > "$3.tmp"
mv "$3.tmp" "$3"
