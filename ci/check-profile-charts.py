#!/usr/bin/env python3
"""Render every add-on profile's real chart with the values imgbuild gives it, and check
what comes out (driven by ci/check-profile-charts.sh, which finds the tools).

For each profile: a cluster made by `imgbuild cluster init` with the profile turned on
(credentials files for the CSI drivers), its seeds from `imgbuild cloud-init`; the values
of a release are the ones the installer passes to helm on the first control plane: the
recipe's baked values (the image's <release>-values.yaml), then the user-data file
/etc/imgbuild/addons/<release>.yaml. Then, per release:

  helm template RELEASE CHART --namespace NS --kube-version 1.30.3 --include-crds -f baked -f user
  (the installer's `helm upgrade --install` installs the chart's crds/ too);
  every built-in object: kubernetes-validate -k 1.30.0 --strict (a kind it has no schema
  for is a failure);
  every custom resource: the openAPIV3Schema of its CRD from the profile charts, strict
  (a field the schema does not declare is refused unless the schema preserves unknown
  fields, as the API server's strict field validation does); a kind without a CRD in the
  charts is a failure;
  every Secret a pod reads (env secretKeyRef, secret volumes) that the chart does not
  render must be one imgbuild delivers (secrets/<profile>.yaml) with the keys read;
  every baked value key must exist in the chart's values.yaml (or be one its templates
  read: listed per chart below, with where).

Prints per profile the images and the CPU/memory requests and limits of what it runs.
Exit 1 on any failure.
"""

import copy
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import yaml

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "image-recipes/ubuntu-24.04-k8s-v1.30.3.yaml"
KUBE_VERSION = "1.30.3"

# Baked keys that the chart's values.yaml does not list but its templates read.
EXTRA_KEYS = {
    # values.yaml has it commented out; templates/{controllerplugin-deployment,
    # nodeplugin-daemonset}.yaml mount `secretName: {{ .Values.secret.name }}`.
    "cinder-csi": [("secret", "name")],
    # The collector's own configuration: merged verbatim into its ConfigMap, checked
    # against the collector below (check_collector_config).
    "logging": [("config",)],
}

# The components of the otel/opentelemetry-collector-k8s 0.99.0 image the logging profile
# runs (opentelemetry-collector-releases v0.99.0, distributions/otelcol-k8s/manifest.yaml).
# A configuration naming another type is refused by the collector at start.
OTELCOL_K8S = {
    "receivers": {"otlp", "filelog", "fluentforward", "hostmetrics", "httpcheck", "jaeger", "journald",
                  "k8s_cluster", "k8s_events", "k8sobjects", "kubeletstats", "opencensus", "prometheus",
                  "receiver_creator", "zipkin"},
    "processors": {"batch", "memory_limiter", "attributes", "cumulativetodelta", "deltatorate", "filter",
                   "groupbyattrs", "groupbytrace", "k8sattributes", "metricstransform",
                   "probabilistic_sampler", "redaction", "remotetap", "resourcedetection", "resource",
                   "tail_sampling", "transform"},
    "exporters": {"debug", "otlp", "otlphttp", "file", "loadbalancing"},
    "extensions": {"zpages", "basicauth", "bearertokenauth", "headers_setter", "health_check",
                   "oauth2client", "host_observer", "k8s_observer", "oidc", "pprof", "file_storage"},
    "connectors": {"forward", "count", "routing", "servicegraph", "spanmetrics"},
}

# Secrets imgbuild delivers that the workload reads through the Kubernetes API by name,
# not from a mount or variable: Argo CD reads argocd-secret (admin.password, …) itself.
API_READ_SECRETS = {("argocd", "argocd-secret")}

# Secrets the pods read that a Job of the chart creates at install time (not rendered).
RUNTIME_SECRETS = {
    # kube-webhook-certgen's `create` Job (pre-install hook) writes the operator's
    # admission webhook certificate.
    ("monitoring", "monitoring-kube-prometheus-admission"),
    # argo-cd 7.x's redis-secret-init Job (pre-install hook) generates the Redis password.
    ("argocd", "argocd-redis"),
}

TOKEN = "dt0c01.CHARTCHECK.0123456789abcdef"
CLOUD_CONF = (
    "[Global]\nauth-url = https://keystone.example.test:5000/v3\n"
    "application-credential-id = 0c6a1b2c3d4e\napplication-credential-secret = s3cret\n"
    "region = RegionOne\n"
)
CLUSTERS = {
    # name: (addons text, {credentials file: body})
    "apps": (
        "  profiles: [monitoring, logging, gitops]\n"
        "  logging:\n    endpoint: https://abc123.live.dynatrace.com/api/v2/otlp\n"
        f"    token: {TOKEN}\n"
        "  gitops:\n    repo_url: https://git.example.test/platform/app.git\n    revision: main\n",
        {},
    ),
    "cinder": ("  profiles: [cinder]\n", {"secrets/cinder-cloud.conf": CLOUD_CONF}),
    "proxmox": (
        "  profiles: [proxmox]\n  proxmox:\n    url: https://pve.example.test:8006/api2/json\n"
        "    region: pve-lab\n    storage: local-lvm\n",
        {"secrets/proxmox-csi.yaml": 'token_id: "kubernetes-csi@pve!csi"\ntoken_secret: 5f1e8c2a-0000-4000-8000-c5b0a1d2e3f4\n'},
    ),
    "hcloud": ("  profiles: [hcloud]\n", {"secrets/hcloud.yaml": "token: " + "h" * 64 + "\n"}),
}
PROFILE_CLUSTER = {
    "monitoring": "apps",
    "logging": "apps",
    "gitops": "apps",
    "cinder": "cinder",
    "proxmox": "proxmox",
    "hcloud": "hcloud",
}

failures = []


class Loader(yaml.SafeLoader):
    """YAML 1.1 reads a bare `=` as the `value` type PyYAML cannot build; Kubernetes
    (YAML 1.2 via JSON) reads it as the string "=", e.g. in CRD enums."""


Loader.add_constructor("tag:yaml.org,2002:value", lambda l, n: l.construct_scalar(n))


def load_all(text):
    return [d for d in yaml.load_all(text, Loader=Loader) if d]


quiet = False


def fail(where, msg):
    failures.append(f"{where}: {msg}")
    if not quiet:
        print(f"  FAIL {where}: {msg}", file=sys.stderr)


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


# --- the values imgbuild gives each release -------------------------------------------


def make_cluster(imgbuild, work, name):
    addons, creds = CLUSTERS[name]
    d = work / name
    o = run([imgbuild, "cluster", "init", "--name", "demo", "--endpoint", "10.0.0.10:6443",
             "--external-lb", "--control-planes", "1", "--workers", "1", "--dir", str(d)])
    if o.returncode != 0:
        sys.exit(f"cluster init: {o.stderr}")
    c = d / "cluster.yaml"
    text = c.read_text()
    i = text.index("\naddons:\n")
    j = text.index("\n", i + len("\naddons:\n"))  # after `enabled: true`
    c.write_text(text[: j + 1] + addons + text[j + 1:])
    for rel, body in creds.items():
        p = d / rel
        p.write_text(body)
        p.chmod(0o600)
    out = d / "out"
    o = run([imgbuild, "cloud-init", "--all", "--seed", "none", "--cluster", str(c), "--out", str(out)])
    if o.returncode != 0:
        sys.exit(f"cloud-init ({name}): {o.stderr}")
    ud = yaml.safe_load((out / "demo-cp-1/user-data").read_text())
    return {f["path"]: f["content"] for f in ud["write_files"]}


# --- checks ---------------------------------------------------------------------------


def leaf_paths(v, prefix=()):
    """Every leaf of a values tree as a tuple of keys (keys may contain dots)."""
    if isinstance(v, dict) and v:
        for k, x in v.items():
            yield from leaf_paths(x, prefix + (k,))
    else:
        yield prefix


def has_key(values, path):
    """Is `path` a key of the chart's values (a map there may take any key)?"""
    cur = values
    for part in path:
        if not isinstance(cur, dict):
            return False
        if part not in cur:
            # an empty map in values.yaml is a free-form one (e.g. podAnnotations: {})
            return cur == {}
        cur = cur[part]
    return True


def chart_values(chart):
    """The chart's values.yaml, with each subchart's under its name (as helm merges them)."""
    v = yaml.safe_load((chart / "values.yaml").read_text()) or {}
    sub = chart / "charts"
    if sub.is_dir():
        for s in sorted(sub.iterdir()):
            if (s / "values.yaml").is_file():
                sv = yaml.safe_load((s / "values.yaml").read_text()) or {}
                mine = v.setdefault(s.name, {})
                if isinstance(mine, dict):
                    v[s.name] = deep_merge(sv, mine)
    return v


def deep_merge(base, top):
    out = copy.deepcopy(base)
    for k, x in top.items():
        if isinstance(x, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], x)
        else:
            out[k] = copy.deepcopy(x)
    return out


def check_keys(where, chart, baked, extra):
    known = chart_values(chart)
    for p in leaf_paths(baked):
        if has_key(known, p) or any(p[: len(e)] == e for e in extra):
            continue
        fail(where, f"baked value {'.'.join(p)} is not a key of the chart's values.yaml")


def kubernetes_validate(kv, where, docs, tmp):
    if not docs:
        return
    f = tmp / "builtin.yaml"
    f.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    o = run([kv, "-k", "1.30.0", "--strict", str(f)])
    for line in (o.stdout + o.stderr).splitlines():
        if line.startswith("INFO") or not line.strip():
            continue
        fail(where, "kubernetes-validate: " + line.replace(str(f), "<render>"))
    if o.returncode != 0:
        fail(where, f"kubernetes-validate exit {o.returncode}")


def strict_schema(s):
    """A CRD's openAPIV3Schema as JSON Schema the way the API server reads it: unknown
    fields refused (unless preserved), nullable, int-or-string, embedded objects."""
    if isinstance(s, list):
        return [strict_schema(x) for x in s]
    if not isinstance(s, dict):
        return s
    s = {k: strict_schema(v) for k, v in s.items()}
    if s.pop("x-kubernetes-int-or-string", False):
        s.pop("type", None)
        s["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    preserve = s.pop("x-kubernetes-preserve-unknown-fields", False)
    embedded = s.pop("x-kubernetes-embedded-resource", False)
    if embedded:
        props = s.setdefault("properties", {})
        for k in ("apiVersion", "kind"):
            props.setdefault(k, {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    if s.get("type") == "object" and "properties" in s and "additionalProperties" not in s and not preserve:
        s["additionalProperties"] = False
    if s.pop("nullable", False) and "type" in s:
        s["type"] = [s["type"], "null"]
    for k in [k for k in s if k.startswith("x-kubernetes-")]:
        s.pop(k)
    return s


def crd_schemas(docs):
    out = {}
    for d in docs:
        if d.get("kind") != "CustomResourceDefinition":
            continue
        spec = d["spec"]
        for v in spec["versions"]:
            if not v.get("served", True):
                continue
            schema = (v.get("schema") or {}).get("openAPIV3Schema")
            key = (f"{spec['group']}/{v['name']}", spec["names"]["kind"])
            out[key] = (d["metadata"]["name"], schema)
    return out


def check_custom(where, d, crds):
    key = (d.get("apiVersion"), d.get("kind"))
    name = f"{d.get('kind')}/{(d.get('metadata') or {}).get('name')}"
    if key not in crds:
        fail(where, f"{name}: no CRD for {key[0]} {key[1]} in the profile charts")
        return
    crd, schema = crds[key]
    if schema is None:
        fail(where, f"{name}: CRD {crd} has no schema")
        return
    s = strict_schema(schema)
    props = s.setdefault("properties", {})
    # apiVersion, kind, metadata are validated by the API server itself (ObjectMeta).
    for k in ("apiVersion", "kind"):
        props.setdefault(k, {"type": "string"})
    props["metadata"] = {"type": "object", "required": ["name"]}
    s.pop("additionalProperties", None)
    s["additionalProperties"] = False
    v = jsonschema.Draft7Validator(s)
    errs = sorted(v.iter_errors(d), key=lambda e: list(e.absolute_path))
    for e in errs[:5]:
        path = ".".join(str(p) for p in e.absolute_path) or "<top>"
        fail(where, f"{name} against CRD {crd}: {path}: {e.message[:300]}")


POD_OWNERS = {"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job"}


def pod_specs(d):
    k = d.get("kind")
    if k == "Pod":
        yield d["spec"]
    elif k in POD_OWNERS:
        yield d["spec"]["template"]["spec"]
    elif k == "CronJob":
        yield d["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def check_secret_refs(where, docs, ns, provided):
    """Every Secret key a pod reads exists: rendered by the chart or delivered by imgbuild."""
    rendered = {(x["metadata"].get("namespace", ns), x["metadata"]["name"]): x for x in docs if x.get("kind") == "Secret"}
    read = {}
    for d in docs:
        dns = d.get("metadata", {}).get("namespace", ns)
        for spec in pod_specs(d):
            refs = []
            for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
                for e in c.get("env") or []:
                    r = (e.get("valueFrom") or {}).get("secretKeyRef")
                    if r and not r.get("optional"):
                        refs.append((r["name"], [r["key"]]))
                for e in c.get("envFrom") or []:
                    r = e.get("secretRef")
                    if r and not r.get("optional"):
                        refs.append((r["name"], []))
            for vol in spec.get("volumes") or []:
                r = vol.get("secret")
                if r and not r.get("optional"):
                    refs.append((r["secretName"], [i["key"] for i in r.get("items") or []]))
            for name, keys in refs:
                if (dns, name) in provided:
                    read.setdefault((dns, name), set()).update(keys or provided[(dns, name)].get("data", {}).keys())
                s = rendered.get((dns, name)) or provided.get((dns, name))
                owner = f"{d['kind']}/{d['metadata']['name']}"
                if s is None and (dns, name) in RUNTIME_SECRETS:
                    continue
                if s is None:
                    fail(where, f"{owner} reads Secret {dns}/{name}, which neither the chart nor imgbuild creates")
                    continue
                have = set((s.get("data") or {}).keys()) | set((s.get("stringData") or {}).keys())
                if s is provided.get((dns, name)) or have:
                    for k in keys:
                        if k not in have:
                            fail(where, f"{owner} reads key {k!r} of Secret {dns}/{name}, which has {sorted(have)}")
    # The other way round: every key imgbuild delivers is one a pod reads.
    for key, s in provided.items():
        if key in API_READ_SECRETS:
            continue
        unread = set((s.get("data") or {}).keys()) - read.get(key, set())
        if unread:
            fail(where, f"Secret {key[0]}/{key[1]}: no pod reads {sorted(unread)}")


def check_collector_config(where, docs):
    """The collector's rendered configuration as the collector validates it at start:
    every component of a pipeline (and every extension in service) defined, every
    component a type the image has; ${env:VAR} only for variables the pod sets."""
    for d in docs:
        if d.get("kind") != "ConfigMap" or "relay" not in (d.get("data") or {}):
            continue
        cfg = yaml.safe_load(d["data"]["relay"])
        for section, types in OTELCOL_K8S.items():
            for cid in cfg.get(section) or {}:
                if cid.split("/")[0] not in types:
                    fail(where, f"collector {section}: {cid}: not a component of otelcol-k8s 0.99.0")
        svc = cfg.get("service") or {}
        for ext in svc.get("extensions") or []:
            if ext not in (cfg.get("extensions") or {}):
                fail(where, f"collector service.extensions: {ext} is not defined")
        for name, pl in (svc.get("pipelines") or {}).items():
            for section in ("receivers", "processors", "exporters"):
                defined = set(cfg.get(section) or {}) | set(cfg.get("connectors") or {})
                for cid in pl.get(section) or []:
                    if cid not in defined:
                        fail(where, f"collector pipeline {name}: {section[:-1]} {cid} is not defined")
            if not pl.get("receivers") or not pl.get("exporters"):
                fail(where, f"collector pipeline {name}: needs receivers and exporters")
        env = {e["name"] for x in docs for s in pod_specs(x) for c in s.get("containers") or [] for e in c.get("env") or []}
        for var in re.findall(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}", d["data"]["relay"]):
            if var not in env:
                fail(where, f"collector configuration reads ${{env:{var}}}, which the pod does not set")


# Pod Security Standards, baseline level (kubernetes.io/docs/concepts/security/pod-security-standards):
# the capabilities a container may add, and the sysctls a pod may set.
BASELINE_CAPS = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                 "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
BASELINE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                    "net.ipv4.tcp_keepalive_probes"}


def baseline_violations(spec):
    """What in a pod spec the baseline level refuses (the controls of the standard)."""
    out = []
    for k in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(k):
            out.append(k)
    for v in spec.get("volumes") or []:
        if "hostPath" in v:
            out.append(f"hostPath volume {v['name']}")
    for s in (spec.get("securityContext") or {}).get("sysctls") or []:
        if s["name"] not in BASELINE_SYSCTLS:
            out.append(f"sysctl {s['name']}")
    scs = [("pod", spec.get("securityContext") or {})]
    for c in (spec.get("containers") or []) + (spec.get("initContainers") or []) + (spec.get("ephemeralContainers") or []):
        sc = c.get("securityContext") or {}
        scs.append((c["name"], sc))
        if sc.get("privileged"):
            out.append(f"{c['name']}: privileged")
        extra = set((sc.get("capabilities") or {}).get("add") or []) - BASELINE_CAPS
        if extra:
            out.append(f"{c['name']}: capabilities {sorted(extra)}")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"{c['name']}: hostPort {port['hostPort']}")
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"{c['name']}: procMount {sc['procMount']}")
    for who, sc in scs:
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            out.append(f"{who}: seccomp Unconfined")
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            out.append(f"{who}: AppArmor Unconfined")
        se = sc.get("seLinuxOptions") or {}
        if se.get("type") not in (None, "", "container_t", "container_init_t", "container_kvm_t") or se.get("user") or se.get("role"):
            out.append(f"{who}: seLinuxOptions {se}")
    return out


def check_pod_security(where, docs, ns, level):
    """A namespace enforcing `baseline` admits the chart's pods only if they pass it
    (privileged admits anything; kube-system is exempt in the cluster's configuration)."""
    if level != "baseline" or ns == "kube-system":
        return
    for d in docs:
        for spec in pod_specs(d):
            for v in baseline_violations(spec):
                fail(where, f"{d['kind']}/{d['metadata']['name']} in {ns} (enforces baseline): {v}")


CONTROL_PLANE_TAINT = "node-role.kubernetes.io/control-plane"


def check_tolerations(where, docs):
    """The recipe tolerates the control-plane taint for every component, so a cluster
    without workers runs them: a pod the chart renders without it ignored that value."""
    for d in docs:
        hook = (d.get("metadata", {}).get("annotations") or {}).get("helm.sh/hook", "")
        specs = list(pod_specs(d))
        if d.get("kind") in ("Prometheus", "Alertmanager"):
            specs = [d["spec"]]
        for spec in specs:
            if any(h.startswith("test") for h in hook.split(",")):
                continue  # `helm test` pods: the installer never runs them
            ok = any(
                t.get("key") == CONTROL_PLANE_TAINT or (t.get("key") is None and t.get("operator") == "Exists")
                for t in spec.get("tolerations") or []
            )
            if not ok:
                fail(where, f"{d['kind']}/{d['metadata']['name']} does not tolerate {CONTROL_PLANE_TAINT}")


def default_classes(docs):
    return [
        d["metadata"]["name"]
        for d in docs
        if d.get("kind") == "StorageClass"
        and (d["metadata"].get("annotations") or {}).get("storageclass.kubernetes.io/is-default-class") == "true"
    ]


# --- cost: images and resources ------------------------------------------------------


def workloads(docs):
    """(kind/name, replicas-or-'per node', containers) of everything that runs pods,
    including the Prometheus and Alertmanager the operator makes from their resources."""
    for d in docs:
        k, name = d.get("kind"), d.get("metadata", {}).get("name")
        hook = (d.get("metadata", {}).get("annotations") or {}).get("helm.sh/hook", "")
        if any(h.startswith("test") for h in hook.split(",")):
            continue  # `helm test` pods: the installer never runs them
        for spec in pod_specs(d):
            rep = "per node" if k == "DaemonSet" else ("once" if k in ("Job", "CronJob", "Pod") else d["spec"].get("replicas", 1))
            if hook:
                rep = f"once ({hook} hook)"
            cs = [(c["name"], c.get("image"), c.get("resources") or {}) for c in spec.get("containers") or []]
            ics = [(c["name"] + " (init)", c.get("image"), c.get("resources") or {}) for c in spec.get("initContainers") or []]
            yield f"{k}/{name}", rep, cs + ics
        if k in ("Prometheus", "Alertmanager") and d.get("apiVersion", "").startswith("monitoring.coreos.com/"):
            s = d["spec"]
            img = s.get("image")
            yield f"{k}/{name} (made by the operator)", s.get("replicas", 1), [(k.lower(), img, s.get("resources") or {})]


def operator_images(docs):
    """Images the Prometheus operator starts itself (config reloader sidecars)."""
    out = []
    for d in docs:
        for spec in pod_specs(d):
            for c in spec.get("containers") or []:
                for a in c.get("args") or []:
                    m = re.match(r"--prometheus-config-reloader=(\S+)", a)
                    if m:
                        out.append(m.group(1))
    return out


# --- main -------------------------------------------------------------------------------


def self_test():
    """Each check on made-up objects: it passes the good one and names what is wrong in
    each bad one (run in CI by tests/it/profiles.rs, where the real charts are absent)."""
    global failures, quiet
    quiet = True
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.test"},
        "spec": {"group": "example.test", "names": {"kind": "Widget"}, "versions": [{
            "name": "v1", "served": True, "schema": {"openAPIV3Schema": {
                "type": "object", "properties": {"spec": {
                    "type": "object", "required": ["size"], "properties": {
                        "size": {"x-kubernetes-int-or-string": True},
                        "note": {"type": "string", "nullable": True},
                        "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        "template": {"type": "object", "x-kubernetes-embedded-resource": True,
                                     "properties": {"spec": {"type": "object"}}},
                    }}}}}}]},
    }
    crds = crd_schemas([crd])
    widget = {"apiVersion": "example.test/v1", "kind": "Widget", "metadata": {"name": "w"},
              "spec": {"size": "1Gi", "note": None, "extra": {"any": 1},
                       "template": {"apiVersion": "v1", "kind": "Pod", "metadata": {}, "spec": {}}}}
    pod = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "d"}, "spec": {"template": {"spec": {
        "tolerations": [{"key": CONTROL_PLANE_TAINT, "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [{"name": "c", "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}],
    }}}}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "ns"}, "data": {"k": "eA=="}}
    relay = {"receivers": {"filelog": {}}, "exporters": {"otlphttp": {"headers": {"A": "${env:T}"}}},
             "extensions": {"health_check": {}},
             "service": {"extensions": ["health_check"], "pipelines": {"logs": {"receivers": ["filelog"], "exporters": ["otlphttp"]}}}}
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"relay": yaml.safe_dump(relay)}}

    def case(name, fn, want):
        global failures
        failures = []
        fn()
        got = "\n".join(failures)
        ok = (not got) if want is None else (want in got)
        print(f"self-test {name}: {'ok' if ok else 'WRONG'}", file=sys.stderr)
        return ok if ok else f"{name}: want {want!r}, got {got!r}"

    def edit(doc, f):
        d = copy.deepcopy(doc)
        f(d)
        return d

    spec = lambda d: d["spec"]["template"]["spec"]
    results = [
        case("custom resource", lambda: check_custom("t", widget, crds), None),
        case("undeclared field", lambda: check_custom("t", edit(widget, lambda d: d["spec"].update(bogus=1)), crds), "'bogus' was unexpected"),
        case("wrong type", lambda: check_custom("t", edit(widget, lambda d: d["spec"].update(size=[1])), crds), "spec.size"),
        case("required field", lambda: check_custom("t", edit(widget, lambda d: d["spec"].pop("size")), crds), "'size' is a required property"),
        case("kind without CRD", lambda: check_custom("t", edit(widget, lambda d: d.update(kind="Gadget")), crds), "no CRD for example.test/v1 Gadget"),
        case("secret key", lambda: check_secret_refs("t", [pod], "ns", {("ns", "s"): secret}), None),
        case("missing key", lambda: check_secret_refs("t", [pod], "ns", {("ns", "s"): edit(secret, lambda d: d.update(data={"x": ""}))}), "reads key 'k'"),
        case("unread key", lambda: check_secret_refs("t", [pod], "ns", {("ns", "s"): edit(secret, lambda d: d["data"].update(j="eA=="))}), "no pod reads ['j']"),
        case("missing secret", lambda: check_secret_refs("t", [pod], "ns", {}), "neither the chart nor imgbuild creates"),
        case("toleration", lambda: check_tolerations("t", [pod]), None),
        case("no toleration", lambda: check_tolerations("t", [edit(pod, lambda d: spec(d).pop("tolerations"))]), "does not tolerate"),
        case("baseline", lambda: check_pod_security("t", [pod], "ns", "baseline"), None),
        case("host path", lambda: check_pod_security("t", [edit(pod, lambda d: spec(d).update(volumes=[{"name": "v", "hostPath": {"path": "/"}}]))], "ns", "baseline"), "hostPath volume v"),
        case("host port", lambda: check_pod_security("t", [edit(pod, lambda d: spec(d)["containers"][0].update(ports=[{"containerPort": 1, "hostPort": 1}]))], "ns", "baseline"), "hostPort 1"),
        case("privileged ns", lambda: check_pod_security("t", [edit(pod, lambda d: spec(d).update(hostNetwork=True))], "ns", "privileged"), None),
        case("collector", lambda: check_collector_config("t", [cm, pod]), None),
        case("undefined exporter", lambda: check_collector_config("t", [edit(cm, lambda d: d["data"].update(relay=yaml.safe_dump(edit(relay, lambda r: r["exporters"].pop("otlphttp"))))), pod]), "exporter otlphttp is not defined"),
        case("unknown component", lambda: check_collector_config("t", [edit(cm, lambda d: d["data"].update(relay=yaml.safe_dump(edit(relay, lambda r: r["receivers"].update(kafka={}))))), pod]), "kafka: not a component"),
        case("unset variable", lambda: check_collector_config("t", [cm]), "${env:T}"),
        case("value keys", lambda: check_keys("t", REPO / "charts/backend", {"replicaCount": 1, "podAnnotations": {"a.b/c": "x"}}, []), None),
        case("unknown key", lambda: check_keys("t", REPO / "charts/backend", {"replicaCont": 1}, []), "replicaCont is not a key"),
        case("listed key", lambda: check_keys("t", REPO / "charts/backend", {"x": {"y": 1}}, [("x",)]), None),
    ]
    bad = [r for r in results if r is not True]
    for b in bad:
        print(f"  WRONG {b}", file=sys.stderr)
    failures = []
    return 1 if bad else 0


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    src = Path(sys.argv[1]).resolve()
    imgbuild, helm, kv = os.environ["IMGBUILD"], os.environ["HELM"], os.environ["KUBERNETES_VALIDATE"]
    # Holds generated cluster secrets: private to this user, removed when done.
    with tempfile.TemporaryDirectory(prefix="check-profile-charts.") as w:
        return check(src, Path(w), imgbuild, helm, kv)


def check(src, work, imgbuild, helm, kv):
    recipe = yaml.safe_load(RECIPE.read_text())
    versions = {a["name"]: str(a["version"]) for a in recipe["artifacts"]}
    files = {name: make_cluster(imgbuild, work, name) for name in CLUSTERS}

    # releases: (profile, release, namespace, chart dir, baked values, cluster)
    releases = []
    levels = {}  # namespace -> the Pod Security level the recipe gives it
    for a in recipe["addons"]:
        p = a.get("profile")
        if not p:
            continue
        chart = src / a["artifact"]
        cy = chart / "Chart.yaml"
        if not cy.is_file():
            sys.exit(f"{chart}: no Chart.yaml (ci/profile-chart-sources.sh lays the sources out)")
        have = str(yaml.safe_load(cy.read_text())["version"])
        if have != versions[a["artifact"]]:
            sys.exit(f"{chart}: version {have}, the recipe pins {versions[a['artifact']]}")
        releases.append((p, a["release"], a["namespace"], chart, a.get("values") or {}, PROFILE_CLUSTER[p]))
        levels[a["namespace"]] = a.get("pod_security", "baseline")
        if p == "gitops":
            releases.append((p, "backend-app", a["namespace"], REPO / "charts/gitops-backend", {}, "apps"))
    # What the profiles change in the embedded charts: the backend (scraped by monitoring),
    # local-path (not the default class beside a CSI driver).
    releases.append((None, "backend", "backend", REPO / "charts/backend", {}, "apps"))
    for cl in ("apps", "cinder", "proxmox", "hcloud"):
        releases.append((None, "local-path", "local-path-storage", REPO / "charts/local-path", {}, cl))

    rendered = {}
    for p, rel, ns, chart, baked, cl in releases:
        where = f"{p or 'embedded'}/{rel} ({cl})"
        tmp = work / f"{cl}-{rel}"
        tmp.mkdir()
        args = [helm, "template", rel, str(chart), "--namespace", ns, "--kube-version", KUBE_VERSION, "--include-crds"]
        if baked:
            (tmp / "baked.yaml").write_text(yaml.safe_dump(baked))
            args += ["-f", str(tmp / "baked.yaml")]
        user_path = "/etc/imgbuild/addons/values.yaml" if rel == "backend" else f"/etc/imgbuild/addons/{rel}.yaml"
        user = files[cl].get(user_path)
        if user is not None:
            (tmp / "user.yaml").write_text(user)
            args += ["-f", str(tmp / "user.yaml")]
        o = run(args)
        if o.returncode != 0:
            fail(where, "helm template: " + o.stderr.strip()[-800:])
            continue
        docs = load_all(o.stdout)
        rendered[(p, rel, cl)] = (where, ns, chart, baked, docs)
        if p:
            # The keys of every values file the release gets (the cluster's too).
            given = copy.deepcopy(baked)
            if user is not None:
                given = deep_merge(given, yaml.safe_load(user) or {})
            check_keys(where, chart, given, EXTRA_KEYS.get(rel, []))
            check_collector_config(where, docs)
        print(f"{where}: rendered {len(docs)} objects", file=sys.stderr)

    crds = {}
    for (_, _, _, _, docs) in rendered.values():
        crds.update(crd_schemas(docs))
    for (p, rel, cl), (where, ns, chart, baked, docs) in rendered.items():
        custom = [d for d in docs if (d.get("apiVersion"), d.get("kind")) in crds]
        builtin = [d for d in docs if (d.get("apiVersion"), d.get("kind")) not in crds]
        kubernetes_validate(kv, where, builtin, work / f"{cl}-{rel}")
        for d in custom:
            check_custom(where, d, crds)
        provided = {}
        if p:
            s = files[cl].get(f"/etc/imgbuild/addons/secrets/{p}.yaml")
            if s:
                sd = yaml.safe_load(s)
                provided[(sd["metadata"]["namespace"], sd["metadata"]["name"])] = sd
                kubernetes_validate(kv, f"{where} Secret", [sd], work / f"{cl}-{rel}")
        check_secret_refs(where, docs, ns, provided)
        if p:
            check_tolerations(where, docs)
            check_pod_security(where, docs, ns, levels.get(ns, "baseline"))
        n_custom = len(custom)
        print(f"{where}: {len(builtin)} built-in objects (kubernetes-validate --strict 1.30), "
              f"{n_custom} custom resources (CRD schemas)", file=sys.stderr)

    # A CSI cluster has exactly one default StorageClass: the driver's.
    for cl in ("cinder", "proxmox", "hcloud"):
        defaults = [c for (p, rel, c2), v in rendered.items() if c2 == cl for c in default_classes(v[4])]
        lp = rendered.get((None, "local-path", cl))
        if lp:
            defaults += [f"local-path:{c}" for c in default_classes(lp[4])]
        if len(defaults) != 1:
            fail(cl, f"default StorageClasses {defaults}: want exactly the driver's")
        else:
            print(f"{cl}: the one default StorageClass is {defaults[0]}", file=sys.stderr)

    # cost summary (stdout)
    report = {}
    for (p, rel, cl), (where, ns, chart, baked, docs) in rendered.items():
        if p is None:
            continue
        r = report.setdefault(p, {"images": set(), "workloads": []})
        for wl, rep, cs in workloads(docs):
            r["workloads"].append((rel, wl, rep, cs))
            for _, img, _ in cs:
                if img:
                    r["images"].add(img)
        for d in docs:
            for spec in pod_specs(d):
                who = f"{rel}: {d['kind']}/{d['metadata']['name']}"
                if spec.get("hostNetwork"):
                    r.setdefault("host", []).append(f"{who}: host network")
                for c in spec.get("containers") or []:
                    for port in c.get("ports") or []:
                        if port.get("hostPort"):
                            r.setdefault("host", []).append(f"{who}: hostPort {port['hostPort']}/{port.get('protocol', 'TCP')}")
        for img in operator_images(docs):
            r["images"].add(img + " (config reloader, started by the operator)")
    # The recipe preloads what the render deploys: each profile's `images:` are exactly the
    # images of its render (a new chart version or changed values must update them).
    listed = {}
    for a in recipe["addons"]:
        if a.get("profile"):
            listed.setdefault(a["profile"], set()).update(a.get("images") or [])
    for p, r in report.items():
        want = {i.split(" ")[0] for i in r["images"]}
        have = listed.get(p, set())
        if want != have:
            fail(p, f"the recipe's images are not the render's: missing {sorted(want - have)}, not deployed {sorted(have - want)}")
    for p, r in report.items():
        print(f"\n## {p}")
        print("images:")
        for i in sorted(r["images"]):
            print(f"  {i}")
        print("on the nodes' network: " + ("; ".join(r.get("host", [])) or "nothing"))
        print("workloads (replicas; per container: requests / limits):")
        for rel, wl, rep, cs in r["workloads"]:
            print(f"  {rel}: {wl}: {rep if isinstance(rep, str) else f'{rep} replica(s)'}")
            for cname, _, res in cs:
                req = res.get("requests") or {}
                lim = res.get("limits") or {}
                fmt = lambda m: ", ".join(f"{k} {v}" for k, v in sorted(m.items())) or "none"
                print(f"    {cname}: requests {fmt(req)} / limits {fmt(lim)}")
    print()
    if failures:
        print(f"FAILED: {len(failures)} problem(s)")
        for f in failures:
            print(f"  {f}")
        return 1
    print(f"OK: {len(rendered)} releases rendered and valid; {len(crds)} CRD kinds from the charts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
