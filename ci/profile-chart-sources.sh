#!/usr/bin/env bash
# Lay out the profile charts' upstream sources, at the tags of the versions the recipe pins,
# as ci/check-profile-charts.sh reads them: OUT/<chart>/ is the chart directory as
# `helm pull --untar` would unpack the published .tgz, its dependencies under charts/.
# Used where the published charts cannot be downloaded (no route to their repositories):
# the upstream Git repositories are the next best source, each chart at its release tag.
#
# Usage: ci/profile-chart-sources.sh GIT_ROOT OUT
#   GIT_ROOT holds one git repository (bare or not) per upstream, named <owner>+<name>
#   (or <owner>+<name>/repo): prometheus-community+helm-charts, grafana+helm-charts,
#   open-telemetry+opentelemetry-helm-charts, argoproj+argo-helm, DandyDeveloper+charts,
#   kubernetes+cloud-provider-openstack, hetznercloud+csi-driver,
#   sergelogvinov+proxmox-csi-plugin.
# Nothing from these repositories enters imgbuild's repository: OUT is a scratch directory.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: $0 GIT_ROOT OUT" >&2; exit 2; }
root=$1 out=$2
recipe=image-recipes/ubuntu-24.04-k8s-v1.30.3.yaml

git_dir() { # owner+name
  if [ -d "$root/$1/repo" ]; then echo "$root/$1/repo"; else echo "$root/$1"; fi
}

# extract REPO TAG PATH DEST: the tree PATH of REPO at TAG becomes DEST
extract() {
  local g tmp
  g=$(git_dir "$1")
  git -C "$g" rev-parse -q --verify "refs/tags/$2" >/dev/null || { echo "$1: no tag $2" >&2; exit 1; }
  tmp=$(mktemp -d)
  git -C "$g" archive "$2" "$3" | tar -x -C "$tmp"
  rm -rf "$4" && mkdir -p "$(dirname "$4")" && mv "$tmp/$3" "$4"
  rm -rf "$tmp"
}

# The chart's version in the recipe: the tag must carry exactly that version.
recipe_version() {
  awk -v n="$1" '$1 == "-" && $2 == "name:" && $3 == n {getline; if ($1 == "version:") print $2; exit}' "$recipe"
}
chart_version() { sed -n 's/^version: *"\{0,1\}\([^" #]*\).*/\1/p' "$1/Chart.yaml" | head -n 1; }

# chart NAME REPO TAG PATH: a profile chart, checked against the recipe's version
chart() {
  local want have
  want=$(recipe_version "$1")
  [ -n "$want" ] || { echo "$1: not in $recipe" >&2; exit 1; }
  extract "$2" "$3" "$4" "$out/$1"
  have=$(chart_version "$out/$1")
  [ "$have" = "$want" ] || { echo "$1: tag $3 has version $have, the recipe pins $want" >&2; exit 1; }
  echo "$1 $want <- $2 $3:$4" >&2
}

# dep PARENT NAME REPO TAG PATH: a dependency, under PARENT's charts/
dep() {
  extract "$3" "$4" "$5" "$out/$1/charts/$2"
  echo "  $1/charts/$2 $(chart_version "$out/$1/charts/$2") <- $3 $4:$5" >&2
}

mkdir -p "$out"
# kube-prometheus-stack 61.3.2 has no Chart.lock in Git: its dependencies are ranges
# (kube-state-metrics 5.21.*, prometheus-node-exporter 4.37.*, grafana 8.3.*,
# prometheus-windows-exporter 0.3.*), resolved when the chart was released
# (the tag's commit: 2024-07-17T10:40Z) to the newest version then published:
# grafana 8.3.4 (8.3.5 followed at 14:44Z), prometheus-node-exporter 4.37.0 (4.37.1:
# 07-18), kube-state-metrics 5.21.0, prometheus-windows-exporter 0.3.1.
chart kube-prometheus-stack prometheus-community+helm-charts kube-prometheus-stack-61.3.2 charts/kube-prometheus-stack
dep kube-prometheus-stack kube-state-metrics prometheus-community+helm-charts kube-state-metrics-5.21.0 charts/kube-state-metrics
dep kube-prometheus-stack prometheus-node-exporter prometheus-community+helm-charts prometheus-node-exporter-4.37.0 charts/prometheus-node-exporter
dep kube-prometheus-stack prometheus-windows-exporter prometheus-community+helm-charts prometheus-windows-exporter-0.3.1 charts/prometheus-windows-exporter
dep kube-prometheus-stack grafana grafana+helm-charts grafana-8.3.4 charts/grafana
chart opentelemetry-collector open-telemetry+opentelemetry-helm-charts opentelemetry-collector-0.90.1 charts/opentelemetry-collector
chart argo-cd argoproj+argo-helm argo-cd-7.3.11 charts/argo-cd
dep argo-cd redis-ha DandyDeveloper+charts redis-ha-4.26.1 charts/redis-ha
chart openstack-cinder-csi kubernetes+cloud-provider-openstack openstack-cinder-csi-2.30.3 charts/cinder-csi-plugin
# proxmox-csi-plugin releases chart and driver together: tag v0.7.0 is chart 0.2.5.
chart proxmox-csi-plugin sergelogvinov+proxmox-csi-plugin v0.7.0 charts/proxmox-csi-plugin
chart hcloud-csi hetznercloud+csi-driver v2.17.0 chart
echo "$out"
