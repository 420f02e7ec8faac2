#!/usr/bin/python3
"""The REAL container runtime of the boot tests: Debian 12's containerd (1.6) and runc
(1.1), repacked into the upstream release layout the recipe installs.

The recipe installs containerd's release tarball (`bin/*` -> /usr/local/bin/) and runc's
release binary (-> /usr/local/sbin/runc). Upstream's downloads are not reachable from
CI, so the test mirror serves these instead (ci/boot/make-mirror.py):

  containerd.tar.gz   bin/containerd, bin/containerd-shim-runc-v2, bin/ctr (the release
                      tarball's layout; fixed mtimes, so its digest is stable)
  runc                the runc binary
  versions            containerd=<Debian version>, runc=<Debian version>

They come from `apt-get download containerd runc` (the host's Debian apt) and run in the
Debian-made test base with the product's own containerd.service and config.toml.
Cached under $IMGBUILD_TEST_CACHE/runtime/<hash of this script>.

Usage: make-runtime.py          -> prints the cache dir
"""
import gzip
import io
import os
import shutil
import subprocess
import sys
import tarfile

import testcache

MTIME = 1724198400

PACKAGES = {
    # package: {path in the package: path in the layout}
    "containerd": {
        "usr/bin/containerd": "containerd/bin/containerd",
        "usr/bin/containerd-shim-runc-v2": "containerd/bin/containerd-shim-runc-v2",
        "usr/bin/ctr": "containerd/bin/ctr",
    },
    "runc": {"usr/sbin/runc": "runc"},
}


def log(msg):
    print(f"make-runtime: {msg}", file=sys.stderr)


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"make-runtime: {' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}")
    return r.stdout


def build(dest):
    dl = os.path.join(dest, "dl")
    os.makedirs(dl)
    testcache.apt_download(list(PACKAGES), dl)
    versions = []
    for deb in sorted(os.listdir(dl)):
        path = os.path.join(dl, deb)
        pkg = run(["dpkg-deb", "--field", path, "Package"]).strip()
        ver = run(["dpkg-deb", "--field", path, "Version"]).strip()
        x = os.path.join(dl, pkg + ".x")
        run(["dpkg-deb", "-x", path, x])
        for src, dst in PACKAGES[pkg].items():
            out = os.path.join(dest, dst)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            shutil.copyfile(os.path.join(x, src), out)
            os.chmod(out, 0o755)
        versions.append(f"{pkg}={ver}\n")
    if len(versions) != len(PACKAGES):
        sys.exit(f"make-runtime: apt-get download gave {versions}, wanted {sorted(PACKAGES)}")
    shutil.rmtree(dl)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        ti = tarfile.TarInfo("bin")
        ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, MTIME
        tar.addfile(ti)
        for name in sorted(os.listdir(os.path.join(dest, "containerd", "bin"))):
            path = os.path.join(dest, "containerd", "bin", name)
            ti = tarfile.TarInfo(f"bin/{name}")
            ti.size, ti.mode, ti.mtime = os.path.getsize(path), 0o755, MTIME
            with open(path, "rb") as f:
                tar.addfile(ti, f)
    with open(os.path.join(dest, "containerd.tar.gz"), "wb") as out:
        with gzip.GzipFile(fileobj=out, mode="wb", mtime=MTIME, filename="", compresslevel=1) as gz:
            gz.write(raw.getvalue())
    shutil.rmtree(os.path.join(dest, "containerd"))
    with open(os.path.join(dest, "versions"), "w") as f:
        f.write("".join(sorted(versions)))


def main():
    print(testcache.cached("runtime", [os.path.abspath(__file__)], "versions", build))


if __name__ == "__main__":
    main()
