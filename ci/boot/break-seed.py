#!/usr/bin/python3
"""TEST ONLY: break a rendered user-data for the broken-seed boot scenario.

  break-seed.py USER_DATA TOKEN

Replaces every occurrence of the bootstrap TOKEN (also inside base64/gzip-encoded
write_files content) by a value of the wrong format, in place. Fails when the token
is nowhere in the user-data (then the scenario would prove nothing).
"""
import base64
import gzip
import sys

import yaml

BAD = "not-a-token"


def fix(s, token):
    return s.replace(token, BAD), s.count(token)


def main():
    path, token = sys.argv[1], sys.argv[2]
    text = open(path).read()
    header = text.splitlines()[0]
    doc = yaml.safe_load(text)
    hits = 0
    for wf in doc.get("write_files", []) or []:
        enc = str(wf.get("encoding", "")).lower()
        content = wf.get("content", "")
        if enc in ("b64", "base64"):
            raw = base64.b64decode(content).decode()
            raw, n = fix(raw, token)
            wf["content"] = base64.b64encode(raw.encode()).decode()
        elif enc in ("gz+b64", "gzip+base64", "gz+base64", "gzip+b64"):
            raw = gzip.decompress(base64.b64decode(content)).decode()
            raw, n = fix(raw, token)
            wf["content"] = base64.b64encode(gzip.compress(raw.encode())).decode()
        else:
            continue
        hits += n
    out = header + "\n" + yaml.safe_dump(doc, sort_keys=False)
    out, n = fix(out, token)
    hits += n
    if hits == 0:
        sys.exit(f"break-seed: the token is not in {path}")
    open(path, "w").write(out)
    print(f"break-seed: replaced the token {hits} time(s) by {BAD!r}")


if __name__ == "__main__":
    main()
