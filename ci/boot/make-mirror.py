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

With RUNTIME_DIR (ci/boot/make-runtime.py), containerd and runc are REAL: Debian 12's
containerd 1.6 and runc, in the upstream release layout (the tarball's bin/*, the runc
binary), instead of the stand-in.

Every container image of the recipe (`images[].ref`, `addons[].images[]`) becomes a small
TEST image under the same name (make_images below): an OCI index with a linux/amd64
manifest (Debian's static busybox as its first layer, shared by all of them, plus a
layer with /etc/imgbuild-test-image naming the image) and a linux/arm64 one. OUT/images/
holds their blobs and images.json; ci/boot/push-images.py pushes them into the boot
test's real registry (docker-registry). A reference that pins a digest gets the test
image's index digest instead; tags stay tags, for `imgbuild lock` to resolve.

Usage: make-mirror.py RECIPE BASE_QCOW2 STANDIN ARCHIVE_DIR OUT [RUNTIME_DIR]
Writes OUT/www/..., OUT/test-recipe.yaml (+ OUT/boot-archive-key.asc), OUT/hosts.txt
(one https://host per line), OUT/images/ (blobs/, images.json), OUT/registries.txt (one
registry host per line).
"""
import copy
import fnmatch
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
from urllib.parse import urlsplit

import yaml

ARCH = "amd64"
# Artifacts served from RUNTIME_DIR when it is given: artifact -> file there.
REAL_RUNTIME = {"containerd": "containerd.tar.gz", "runc": "runc"}
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


BUSYBOX = "/bin/busybox"
# Where the test images keep their marker: what `ctr run` prints in the guest.
MARKER = "etc/imgbuild-test-image"


def split_ref(ref):
    """host/path:tag@digest -> (host/path, tag or None, digest or None)."""
    name, _, digest = ref.partition("@")
    slash = name.rfind("/")
    tag = None
    if ":" in name[slash + 1 :]:
        name, _, tag = name.rpartition(":")
    return name, tag, digest or None


def layer(files):
    """A deterministic tar.gz of (path, bytes, mode): (blob, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({os.path.dirname(p) for p, _, _ in files if os.path.dirname(p)})
        for d in dirs:
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, MTIME
            tar.addfile(ti)
        for path, data, mode in files:
            ti = tarfile.TarInfo(path)
            ti.size, ti.mode, ti.mtime = len(data), mode, MTIME
            tar.addfile(ti, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="", compresslevel=6) as gz:
        gz.write(raw.getvalue())
    return out.getvalue(), "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()


def make_images(test, out):
    """One two-arch TEST image per recipe image; rewrites pinned digests in `test`."""
    with open(BUSYBOX, "rb") as f:
        busybox = f.read()
    if b"ld-linux" in busybox[:4096] or b"/lib64/ld-" in busybox:
        sys.exit(f"make-mirror: {BUSYBOX} is dynamically linked; install busybox-static")
    blobs_dir = os.path.join(out, "images", "blobs")
    os.makedirs(blobs_dir, exist_ok=True)

    def put(data):
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs_dir, d[7:]), "wb") as f:
            f.write(data)
        return {"digest": d, "size": len(data)}

    base = layer([("bin/busybox", busybox, 0o755)])
    refs = [(i, "ref") for i in test.get("images", [])]
    for a in test.get("addons", []):
        refs += [(a["images"], j) for j in range(len(a["images"]))]
    entries, hosts = [], set()
    for holder, key in refs:
        ref = holder[key]
        repo, tag, pinned = split_ref(ref)
        hosts.add(repo.split("/", 1)[0])
        manifests, blobs = [], []
        for arch in ("amd64", "arm64"):
            mark = layer([(MARKER, f"{repo}:{tag or ''} {arch}\n".encode(), 0o644)])
            layers = [base, mark] if arch == "amd64" else [mark]
            cfg = {
                "architecture": arch,
                "os": "linux",
                "config": {"Entrypoint": ["/bin/busybox"], "Cmd": ["cat", "/" + MARKER]},
                "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]},
            }
            if arch == "arm64":
                cfg["variant"] = "v8"
            c = put(json.dumps(cfg, sort_keys=True).encode())
            ls = [put(b) for b, _ in layers]
            blobs += [c["digest"]] + [x["digest"] for x in ls]
            m = {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **c},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **x} for x in ls],
            }
            md = put(json.dumps(m, sort_keys=True).encode())
            platform = {"architecture": arch, "os": "linux", **({"variant": "v8"} if arch == "arm64" else {})}
            manifests.append({"mediaType": m["mediaType"], **md, "platform": platform})
        idx = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}
        i = put(json.dumps(idx, sort_keys=True).encode())
        entries.append(
            {
                "repo": repo,
                "tag": tag,
                "blobs": sorted(set(blobs)),
                "manifests": [{"digest": m["digest"], "media_type": m["mediaType"]} for m in manifests],
                "index": {"digest": i["digest"], "media_type": idx["mediaType"]},
            }
        )
        if pinned:  # the charts pin the upstream index digest: pin the test image's
            holder[key] = f"{repo}:{tag}@{i['digest']}" if tag else f"{repo}@{i['digest']}"
    with open(os.path.join(out, "images", "images.json"), "w") as f:
        json.dump(entries, f, indent=1, sort_keys=True)
    with open(os.path.join(out, "registries.txt"), "w") as f:
        f.write("".join(h + "\n" for h in sorted(hosts)))


def main():
    if len(sys.argv) not in (6, 7):
        sys.exit(__doc__)
    recipe_path, base, standin, archive, out = sys.argv[1:6]
    runtime = sys.argv[6] if len(sys.argv) == 7 else None
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
    known |= {"base", "artifacts", "addons", "packages", "images"}
    if "packages" in test:
        hosts += packages(test["packages"], archive, www, out)
    make_images(test, out)
    for key in test:
        if key not in known:
            sys.exit(f"make-mirror: recipe section {key!r} has no test stand-in yet; extend {__file__}")

    for art in test.get("artifacts", []):
        if "chart" in art and not art.get("urls"):
            continue  # a profile's chart, pinned by the lock: not in a build without --profile
        members = members_for(art)
        url0 = render(art["urls"][0], art)
        is_tar = url0.endswith(".tar.gz") or url0.endswith(".tgz")
        if runtime and art["name"] in REAL_RUNTIME:
            with open(os.path.join(runtime, REAL_RUNTIME[art["name"]]), "rb") as f:
                data = f.read()
            if members:
                with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as t:
                    have = set(t.getnames())
                if not set(members) <= have:
                    sys.exit(f"make-mirror: {art['name']}: the real tarball lacks {sorted(set(members) - have)}")
        elif members:
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
