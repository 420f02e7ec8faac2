#!/usr/bin/python3
"""Lay out a TEST mirror and a test recipe for the imgbuild boot tests.

From the default recipe: every download keeps its upstream URL; the mirror holds a
file at <out>/www/<host>/<path> for each of them (so `--mirror https://host=http://
127.0.0.1:PORT/host` serves it under the upstream layout), and the test recipe pins
the real sha256 of what the mirror serves. The base image is the Debian-made
noble-shaped test base; every Kubernetes binary is the multi-call stand-in script
(raw files are the script itself, tarballs carry it under the member names the
recipe's install entries expect). The product then takes its ordinary path:
`imgbuild build --recipe <out>/test-recipe.yaml --mirror ...`.

The recipe's `packages:` section is kept and pointed at the signed TEST apt archive of
ci/boot/make-archive.py (ARCHIVE_DIR: real Debian 12 .debs, its own test key): the same
package names, each pinned to the archive's version, plus the archive's TEST-ONLY
extra requests (EXTRA_REQUESTS below), served under ARCHIVE_URL's layout.

Usage: make-mirror.py RECIPE BASE_QCOW2 STANDIN ARCHIVE_DIR OUT
Writes OUT/www/..., OUT/test-recipe.yaml (+ OUT/boot-archive-key.asc), OUT/hosts.txt
(one https://host per line).
"""
import copy
import fnmatch
import gzip
import hashlib
import io
import os
import sys
import tarfile
from urllib.parse import urlsplit

import yaml

ARCH = "amd64"
# Members of the upstream tarballs that a glob `from` picks up (only what a node
# uses; the stand-in does not need the full set).
GLOB_MEMBERS = {
    "containerd": ["bin/containerd", "bin/containerd-shim-runc-v2", "bin/ctr"],
    "cni-plugins": ["bridge", "host-local", "loopback", "portmap"],
}
MTIME = 1724198400  # fixed, so the tarballs (and their digests) are reproducible
# Where the test recipe says its packages come from (a name that cannot resolve: only the
# --mirror rewrite to the loopback server reaches it).
ARCHIVE_URL = "http://archive.imgbuild-test.invalid/debian"
# Requested in the test recipe on top of the default recipe's packages: ipset depends on
# libipset13, which the boot base lacks (see ci/boot/archive-packages.txt).
EXTRA_REQUESTS = ["ipset"]


def render(t, art):
    return t.replace("{version}", str(art.get("version", ""))).replace("{arch}", ARCH).replace(
        "{name}", art.get("name", "")
    )


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tarball(members, script):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({os.path.dirname(m) for m in members if os.path.dirname(m)})
        for d in dirs:
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, MTIME
            tar.addfile(ti)
        for m in sorted(members):
            ti = tarfile.TarInfo(m)
            ti.size, ti.mode, ti.mtime = len(script), 0o755, MTIME
            tar.addfile(ti, io.BytesIO(script))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=MTIME, filename="") as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def chart(art):
    """A minimal, valid Helm chart package named like the artifact."""
    n, v = art["name"], str(art.get("version", "0.0.0"))
    files = {
        f"{n}/Chart.yaml": f"apiVersion: v2\nname: {n}\nversion: {v}\ndescription: imgbuild boot-test stand-in\n",
        f"{n}/values.yaml": "{}\n",
        f"{n}/templates/NOTES.txt": "imgbuild boot-test stand-in chart\n",
    }
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(files):
            b = files[path].encode()
            ti = tarfile.TarInfo(path)
            ti.size, ti.mode, ti.mtime = len(b), 0o644, MTIME
            tar.addfile(ti, io.BytesIO(b))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=MTIME, filename="") as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def members_for(art):
    out = []
    for ins in art.get("install", []):
        frm = ins.get("from")
        if frm is None:
            continue
        frm = render(frm, art)
        if any(c in frm for c in "*?["):
            known = GLOB_MEMBERS.get(art["name"], [os.path.join(os.path.dirname(frm), art["name"])])
            picked = [m for m in known if fnmatch.fnmatch(m, frm)]
            if not picked:
                sys.exit(f"make-mirror: no stand-in members for {art['name']} matching {frm!r}")
            out.extend(picked)
        else:
            out.append(frm)
    return out


def place(www, urls, art, data=None, link_to=None):
    """Put the bytes (or a symlink to link_to) under every URL's path; return hosts."""
    hosts = []
    for u in urls:
        s = urlsplit(render(u, art))
        if s.scheme not in ("http", "https") or not s.netloc:
            sys.exit(f"make-mirror: unsupported URL {u!r}")
        dest = os.path.join(www, s.netloc, s.path.lstrip("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if os.path.lexists(dest):
            os.unlink(dest)
        if link_to:
            os.symlink(os.path.abspath(link_to), dest)
        else:
            with open(dest, "wb") as f:
                f.write(data)
        hosts.append(f"{s.scheme}://{s.netloc}")
    return hosts


def packages(p, archive, www, out):
    """Point `packages:` at the signed test archive; keep the package names."""
    with open(os.path.join(archive, "versions")) as f:
        versions = dict(line.strip().split("=", 1) for line in f if line.strip())
    names = [s.split("=", 1)[0].strip() for s in p["install"]] + EXTRA_REQUESTS
    missing = [n for n in names if n not in versions]
    if missing:
        sys.exit(f"make-mirror: the test archive lacks {missing}; add them to ci/boot/archive-packages.txt")
    with open(os.path.join(archive, "fingerprint")) as f:
        fpr = f.read().strip()
    with open(os.path.join(archive, "key.asc")) as f:
        key = f.read()
    with open(os.path.join(out, "boot-archive-key.asc"), "w") as f:
        f.write(key)
    p.clear()
    p.update(
        {
            "archive": {ARCH: ARCHIVE_URL},
            "suites": ["bookworm"],
            "components": ["main"],
            "key_file": "boot-archive-key.asc",
            "fingerprint": fpr,
            "install": [f"{n}={versions[n]}" for n in names],
        }
    )
    s = urlsplit(ARCHIVE_URL)
    dest = os.path.join(www, s.netloc, s.path.lstrip("/"))
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    if os.path.lexists(dest):
        os.unlink(dest)
    os.symlink(os.path.abspath(os.path.join(archive, "www")), dest)
    return [f"{s.scheme}://{s.netloc}"]


def main():
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    recipe_path, base, standin, archive, out = sys.argv[1:]
    with open(recipe_path) as f:
        recipe = yaml.safe_load(f)
    with open(standin, "rb") as f:
        script = f.read()
    www = os.path.join(out, "www")
    os.makedirs(www, exist_ok=True)
    test = copy.deepcopy(recipe)
    test["name"] = recipe["name"] + "-boottest"
    test["description"] = "TEST ONLY (ci/boot-test.sh): Debian-made base and stand-in binaries"
    test["arches"] = [ARCH]
    hosts = []

    b = test["base"]
    hosts += place(www, b["urls"], b, link_to=base)
    b["sha256"] = {ARCH: sha256_file(base)}

    known = {"name", "description", "kubernetes_version", "arches", "source_date_epoch", "disk_size"}
    known |= {"base", "artifacts", "addons", "packages"}
    if "packages" in test:
        hosts += packages(test["packages"], archive, www, out)
    for key in test:
        if key not in known:
            sys.exit(f"make-mirror: recipe section {key!r} has no test stand-in yet; extend {__file__}")

    for art in test.get("artifacts", []):
        if "chart" in art and not art.get("urls"):
            continue  # a profile's chart, pinned by the lock: not in a build without --profile
        members = members_for(art)
        url0 = render(art["urls"][0], art)
        is_tar = url0.endswith(".tar.gz") or url0.endswith(".tgz")
        if members:
            if not is_tar:
                sys.exit(f"make-mirror: {art['name']}: members from a non-tarball {url0!r}")
            data = tarball(members, script)
        elif is_tar:
            data = chart(art)  # a tarball installed as a file: a Helm chart package
        else:
            data = script
        hosts += place(www, art["urls"], art, data=data)
        art["sha256"] = {ARCH: hashlib.sha256(data).hexdigest()}
        if url0.startswith("https://dl.k8s.io/"):
            # stand-ins carry no cosign signature (tests/supply_verify.rs covers signing)
            art["signature"] = "none"


    with open(os.path.join(out, "test-recipe.yaml"), "w") as f:
        f.write("# GENERATED by ci/boot/make-mirror.py for the boot tests; TEST ONLY.\n")
        yaml.safe_dump(test, f, sort_keys=False)
    with open(os.path.join(out, "hosts.txt"), "w") as f:
        f.write("".join(h + "\n" for h in sorted(set(hosts))))


if __name__ == "__main__":
    main()
