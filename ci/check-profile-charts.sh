#!/usr/bin/env bash
# Render the add-on profiles' REAL charts with the values imgbuild gives them and check the
# result: kubernetes-validate --strict for 1.30 on every built-in object, the CRD schemas
# shipped in the charts on every custom resource, the Secrets the pods read, the baked
# value keys against each chart's values.yaml; prints each profile's images and resource
# requests (the cost lines of docs/addons.md). What and how: ci/check-profile-charts.py.
#
# Usage: ci/check-profile-charts.sh CHART_SOURCES_DIR
#   CHART_SOURCES_DIR/<chart>/ per profile chart (kube-prometheus-stack,
#   opentelemetry-collector, argo-cd, openstack-cinder-csi, proxmox-csi-plugin, hcloud-csi),
#   unpacked with its dependencies under charts/: `helm pull --untar` of the pinned
#   version on a machine that reaches the repositories, or ci/profile-chart-sources.sh
#   from the upstream Git repositories at the release tags.
# Not part of ci/test.sh: CI downloads no charts and the repository holds no upstream
# chart code (docs/testing.md).
# Env: IMGBUILD  the imgbuild binary [built with cargo]; HELM, KUBERNETES_VALIDATE [PATH,
#      then ci/test.sh's target/ci-tools]
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 1 ] || { echo "usage: $0 CHART_SOURCES_DIR" >&2; exit 2; }

helm_dir="$PWD/target/ci-tools/lambda-layer-kubectl-v30-2.0.4/bin"
HELM=${HELM:-$(command -v helm || echo "$helm_dir/helm")}
KUBERNETES_VALIDATE=${KUBERNETES_VALIDATE:-$(command -v kubernetes-validate || true)}
[ -x "$HELM" ] || { echo "no helm: run ci/test.sh once (it fetches helm into $helm_dir)" >&2; exit 1; }
[ -n "$KUBERNETES_VALIDATE" ] || { echo "no kubernetes-validate: pip install kubernetes-validate" >&2; exit 1; }
python3 -c 'import jsonschema, yaml' || { echo "python3 needs jsonschema and pyyaml" >&2; exit 1; }
if [ -z "${IMGBUILD:-}" ]; then
  cargo build --quiet --bin imgbuild
  IMGBUILD=$PWD/target/debug/imgbuild
fi
export IMGBUILD HELM KUBERNETES_VALIDATE
exec python3 ci/check-profile-charts.py "$1"
