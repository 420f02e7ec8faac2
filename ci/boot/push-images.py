#!/usr/bin/python3
"""Push the boot tests' TEST images (`imgbuild-testkit mirror`: IMAGES_DIR/images.json
and IMAGES_DIR/blobs/) into a running registry through the distribution API: each blob once
per repository (monolithic upload: POST, then PUT with the digest), each platform manifest
by digest, the index by tag (or by digest when the reference has no tag).

Usage: push-images.py REGISTRY_URL IMAGES_DIR     (REGISTRY_URL: http://127.0.0.1:PORT)
"""
import json
import os
import sys
import urllib.error
import urllib.request


def request(method, url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    base, images = sys.argv[1].rstrip("/"), sys.argv[2]
    with open(os.path.join(images, "images.json")) as f:
        entries = json.load(f)
    blob = lambda d: open(os.path.join(images, "blobs", d.split(":", 1)[1]), "rb").read()  # noqa: E731
    for e in entries:
        repo = e["repo"]
        for d in e["blobs"]:
            if request("HEAD", f"{base}/v2/{repo}/blobs/{d}")[0] == 200:
                continue
            st, h, body = request("POST", f"{base}/v2/{repo}/blobs/uploads/")
            if st != 202:
                sys.exit(f"push-images: {repo}: start upload: HTTP {st} {body[:200]!r}")
            loc = h.get("Location") or h.get("location")
            loc = base + loc if loc.startswith("/") else loc
            sep = "&" if "?" in loc else "?"
            st, _, body = request(
                "PUT", f"{loc}{sep}digest={d}", blob(d), {"Content-Type": "application/octet-stream"}
            )
            if st != 201:
                sys.exit(f"push-images: {repo}: upload {d}: HTTP {st} {body[:200]!r}")
        for m in e["manifests"] + [e["index"]]:
            ref = m["digest"]
            if m is e["index"] and e["tag"]:
                ref = e["tag"]
            st, _, body = request(
                "PUT", f"{base}/v2/{repo}/manifests/{ref}", blob(m["digest"]), {"Content-Type": m["media_type"]}
            )
            if st != 201:
                sys.exit(f"push-images: {repo}: manifest {ref}: HTTP {st} {body[:200]!r}")
    print(f"push-images: pushed {len(entries)} image(s)", file=sys.stderr)


if __name__ == "__main__":
    main()
