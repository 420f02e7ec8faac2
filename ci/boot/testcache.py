"""The boot tests' cache of expensive inputs: $IMGBUILD_TEST_CACHE (default
~/.cache/imgbuild-test)/<kind>/<first 16 hex of the sha256 of the input files>. A
directory is built once into a temp dir beside it and renamed into place, so a present
directory is a complete one (its `marker` file says so)."""
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time


def cached(kind, inputs, marker, build):
    """The cache dir for `inputs` (file paths), made with build(dir) when missing."""
    h = hashlib.sha256()
    for p in inputs:
        with open(p, "rb") as f:
            h.update(f.read())
    root = os.environ.get("IMGBUILD_TEST_CACHE") or os.path.join(os.environ.get("HOME", "/root"), ".cache", "imgbuild-test")
    dest = os.path.join(root, kind, h.hexdigest()[:16])
    if os.path.isfile(os.path.join(dest, marker)):
        print(f"{kind}: cached {dest}", file=sys.stderr)
        return dest
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".build-", dir=os.path.dirname(dest))
    try:
        t = time.time()
        build(tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(tmp, dest)
        print(f"{kind}: built {dest} in {time.time() - t:.0f}s", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def apt_download(pkgs, dest):
    """`apt-get download` of `pkgs` into `dest` from the host's Debian apt (after one
    `apt-get update` when the package lists lack them)."""
    cmd = ["apt-get", "download", "-qq", *pkgs]
    if subprocess.run(cmd, cwd=dest, capture_output=True).returncode == 0:
        return
    print("apt-get download failed; apt-get update and retry", file=sys.stderr)
    for c in (["apt-get", "update", "-qq"], cmd):
        r = subprocess.run(c, cwd=dest, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"{' '.join(c)} failed ({r.returncode}):\n{r.stderr}")
