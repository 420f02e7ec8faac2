#!/usr/bin/python3
"""Build (or reuse from the cache) the boot tests' signed TEST apt archive.

Ubuntu's archive is not reachable from CI, so the boot tests install the REAL Debian 12
.debs of ci/boot/archive-packages.txt (taken with `apt-get download` from the host's
Debian apt sources) from an archive laid out and signed like Ubuntu's:

  www/dists/bookworm/InRelease                    clearsigned by a key made for it
  www/dists/bookworm/main/binary-amd64/Packages   (+ .xz), listed in InRelease with
                                                  MD5Sum and SHA256 digests and sizes
  www/pool/main/<p>/<source>/<name>_<version>_amd64.deb
  key.asc                                         the armored public key (TEST ONLY)
  fingerprint, versions                           for the test recipe

The secret key only lives in a temp GNUPGHOME while signing. Cached under
$IMGBUILD_TEST_CACHE/archive/<key> (a hash of this script and the package list), so a
CI machine downloads the .debs once.

Usage: make-archive.py          -> prints the cache dir
"""
import hashlib
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import testcache

HERE = os.path.dirname(os.path.abspath(__file__))
LIST = os.path.join(HERE, "archive-packages.txt")
SUITE, VERSION, COMPONENT, ARCH = "bookworm", "12", "main", "amd64"


def log(msg):
    print(f"make-archive: {msg}", file=sys.stderr)


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"make-archive: {' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}")
    return r.stdout


def digest(data, algo):
    return hashlib.new(algo, data).hexdigest()


def names():
    with open(LIST) as f:
        return [x.strip() for x in f if x.strip() and not x.lstrip().startswith("#")]


def pool_path(fields, deb):
    src = fields.get("Source", fields["Package"]).split()[0]
    prefix = src[:4] if src.startswith("lib") else src[:1]
    ver = fields["Version"].split(":", 1)[-1]  # pool names drop the epoch
    name = f"{fields['Package']}_{ver}_{fields['Architecture']}.deb"
    return f"pool/{COMPONENT}/{prefix}/{src}/{name}"


def control_fields(text):
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9-]+):\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def gpg(home, *args, inp=None):
    return run(
        ["gpg", "--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase", "", *args],
        env={**os.environ, "GNUPGHOME": home},
        input=inp,
    )


def build(dest):
    www = os.path.join(dest, "www")
    dl = os.path.join(dest, "dl")
    os.makedirs(dl)
    pkgs = names()
    testcache.apt_download(pkgs, dl)
    stanzas, versions = [], []
    for f in sorted(os.listdir(dl)):
        deb = os.path.join(dl, f)
        ctl = run(["dpkg-deb", "--field", deb]).rstrip("\n") + "\n"
        fields = control_fields(ctl)
        data = open(deb, "rb").read()
        rel = pool_path(fields, deb)
        os.makedirs(os.path.dirname(os.path.join(www, rel)), exist_ok=True)
        os.rename(deb, os.path.join(www, rel))
        # Like dpkg-scanpackages: the control fields, then where the file is and its digests.
        stanzas.append(
            (
                fields["Package"],
                ctl
                + f"Filename: {rel}\nSize: {len(data)}\nMD5sum: {digest(data, 'md5')}\n"
                + f"SHA256: {digest(data, 'sha256')}\n",
            )
        )
        versions.append(f"{fields['Package']}={fields['Version']}\n")
    got = {n for n, _ in stanzas}
    if got != set(pkgs):
        sys.exit(f"make-archive: apt-get download gave {sorted(got)}, wanted {sorted(pkgs)}")
    os.rmdir(dl)
    index = "\n".join(s for _, s in sorted(stanzas)).encode()
    idir = os.path.join(www, "dists", SUITE, COMPONENT, f"binary-{ARCH}")
    os.makedirs(idir)
    files = {"Packages": index, "Packages.xz": lzma.compress(index, preset=9)}
    for n, b in files.items():
        with open(os.path.join(idir, n), "wb") as f:
            f.write(b)
    # The fields and digest lists of an Ubuntu InRelease.
    date = time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime())
    release = (
        f"Origin: imgbuild-boot-test\nLabel: imgbuild-boot-test\nSuite: {SUITE}\nVersion: {VERSION}\n"
        f"Codename: {SUITE}\nDate: {date}\nArchitectures: {ARCH}\nComponents: {COMPONENT}\n"
        "Description: TEST ONLY: real Debian 12 packages for the imgbuild boot tests\n"
    )
    for title, algo in (("MD5Sum", "md5"), ("SHA256", "sha256")):
        release += f"{title}:\n"
        for n, b in files.items():
            release += f" {digest(b, algo)} {len(b):>8} {COMPONENT}/binary-{ARCH}/{n}\n"
    home = tempfile.mkdtemp(prefix="gnupg-", dir=dest)
    try:
        uid = "imgbuild boot-test archive (TEST ONLY) <boot-test@imgbuild.invalid>"
        gpg(home, "--quick-gen-key", uid, "rsa4096", "sign", "never")
        colons = gpg(home, "--with-colons", "--list-keys", uid)
        fpr = next(line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr:"))
        signed = gpg(home, "--local-user", fpr, "--digest-algo", "SHA512", "--clearsign", inp=release)
        with open(os.path.join(www, "dists", SUITE, "InRelease"), "w") as f:
            f.write(signed)
        with open(os.path.join(dest, "key.asc"), "w") as f:
            f.write(gpg(home, "--armor", "--export", fpr))
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env={**os.environ, "GNUPGHOME": home}, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
    with open(os.path.join(dest, "fingerprint"), "w") as f:
        f.write(fpr + "\n")
    with open(os.path.join(dest, "versions"), "w") as f:
        f.write("".join(sorted(versions)))


def main():
    print(testcache.cached("archive", [os.path.abspath(__file__), LIST], "versions", build))


if __name__ == "__main__":
    main()
