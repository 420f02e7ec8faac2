#!/usr/bin/python3
"""Offline assertions of the boot tests on what a VM left on its disk.

  check.py bootstrap BOOTDIR                   -> prints state and reason of bootstrap.json
  check.py hardening IMAGEDIR BOOTDIR          -> image's hardening config vs the live values
  check.py kubeadm RECDIR SUBCMD [--control-plane|--no-control-plane] [--expect STR]...
                                              -> the last successful kubeadm SUBCMD call got STR
  check.py packages BOOTDIR LOCK BASE_PACKAGES ARCHIVE_VERSIONS
                                              -> the locked packages are installed and work
  check.py runtime BOOTDIR RUNTIME_VERSIONS   -> the real containerd and runc run, no network
  check.py images BOOTDIR RECDIR IMAGES_TSV BOOT
                                              -> the embedded images are in containerd at their
                                                 digests, imported once, one runs; kubeadm saw them
  check.py network BOOTDIR [--static MAC=CIDR] [--dhcp MAC] [--dns IP]... [--search D]...
                   [--ntp SERVER]...          -> the address is on that NIC only, the resolvers
                                                 are in systemd-resolved, NTP is configured
  check.py firewall BOOTDIR CIDR... [--not CIDR]...
                                              -> the live cluster_v4/v6 sets cover each CIDR
                                                 (and none of the --not ones: the defaults)
  check.py addons RECDIR RECIPE CLUSTER_DIR USER_DATA IMAGE_ADDONS
                                              -> the add-on installer applied every release
                                                 of the recipe and the cluster's profiles in
                                                 order, each profile's Secret before its
                                                 chart, imgbuild's files; one default
                                                 StorageClass
  check.py secrets RAW OFFSET NEEDLES [--allow PREFIX]...
                                              -> no needle (one per line) in the ext4 at
                                                 OFFSET of raw disk RAW outside PREFIX paths

Each prints one line per check ("ok ..." / "FAIL ...") and exits 1 if any failed.
BOOTDIR is /var/lib/imgbuild-test/boot-N as read from the disk; IMAGEDIR holds the
role image's /etc as built (read offline from the image before it ever booted). For
`packages`: LOCK is the test recipe's lock (`imgbuild lock`), BASE_PACKAGES the test
base's `dpkg-query -W` list, ARCHIVE_VERSIONS the test archive's name=version list.
"""
import fnmatch
import glob
import json
import os
import re
import sys

failed = 0
counts = {"ok": 0, "FAIL": 0}


def ok(msg):
    counts["ok"] += 1
    print(f"ok   {msg}")


def fail(msg):
    global failed
    failed = 1
    counts["FAIL"] += 1
    print(f"FAIL {msg}")


def read(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def bootstrap_json(bootdir):
    p = os.path.join(bootdir, "run-imgbuild", "bootstrap.json")
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)


def reason_of(doc):
    for k in ("last_error", "reason", "error", "message"):
        if isinstance(doc.get(k), str) and doc[k]:
            return doc[k]
    return ""


def cmd_bootstrap(bootdir):
    doc = bootstrap_json(bootdir)
    if doc is None:
        print("state=<no /run/imgbuild/bootstrap.json>")
        return 1
    print(f"state={doc.get('phase') or doc.get('state', '')}")
    print(f"reason={reason_of(doc)}")
    print("json=" + json.dumps(doc, sort_keys=True))
    return 0


def conf_lines(path):
    if not os.path.isfile(path):  # e.g. 99-sysctl.conf -> ../sysctl.conf, not copied
        return
    for line in read(path).splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")):
            yield line


def check_sysctl(imagedir, bootdir):
    files = sorted(glob.glob(os.path.join(imagedir, "etc/sysctl.d/*.conf")))
    live = {}
    for line in read(os.path.join(bootdir, "sysctl.txt")).splitlines():
        k, _, v = line.partition(" = ")
        live[k.strip()] = " ".join(v.split())
    n = 0
    for f in files:
        for line in conf_lines(f):
            key, _, want = line.partition("=")
            key, want = key.strip().lstrip("-").replace("/", "."), " ".join(want.split())
            keys = [k for k in live if fnmatch.fnmatchcase(k, key)] if "*" in key else [key]
            if "*" in key and not keys:
                ok(f"sysctl {key}: no such interface in the VM (nothing to check)")
                continue
            for k in keys:
                n += 1
                got = live.get(k)
                if got == want:
                    ok(f"sysctl {k} = {want} ({os.path.basename(f)})")
                else:
                    fail(f"sysctl {k}: image sets {want!r} ({os.path.basename(f)}), live value {got!r}")
    return n


def check_modules(imagedir, bootdir):
    loaded = {line.split()[0] for line in read(os.path.join(bootdir, "modules.txt")).splitlines() if line}
    builtin = set()
    for p in glob.glob(os.path.join(imagedir, "modules.builtin")):
        builtin = {os.path.basename(x).removesuffix(".ko").replace("-", "_") for x in read(p).split()}
    n = 0
    for f in sorted(glob.glob(os.path.join(imagedir, "etc/modules-load.d/*.conf"))):
        for mod in conf_lines(f):
            n += 1
            m = mod.replace("-", "_")
            if m in loaded:
                ok(f"module {m} loaded ({os.path.basename(f)})")
            elif m in builtin:
                ok(f"module {m} built in ({os.path.basename(f)})")
            else:
                fail(f"module {m} ({os.path.basename(f)}) is not loaded")
    return n


def check_nft(imagedir, bootdir):
    conf = os.path.join(imagedir, "etc/nftables.conf")
    if not os.path.exists(conf):
        return 0
    tables = sorted(set(re.findall(r"^\s*table\s+(\w+)\s+([\w-]+)", read(conf), re.M)))
    live = read(os.path.join(bootdir, "nft-ruleset.txt"))
    for fam, name in tables:
        if re.search(rf"^table {fam} {name} \{{", live, re.M):
            chains = len(re.findall(r"^\s*chain ", live, re.M))
            ok(f"nftables table {fam} {name} loaded ({chains} chains live)")
        else:
            fail(f"nftables table {fam} {name} from /etc/nftables.conf is not loaded")
    return len(tables)


def check_sshd(imagedir, bootdir):
    live = {}
    for line in read(os.path.join(bootdir, "sshd-T.txt")).splitlines():
        k, _, v = line.partition(" ")
        live.setdefault(k.lower(), []).append(v.strip().lower())
    if not live:
        fail("sshd -T printed nothing: " + read(os.path.join(bootdir, "sshd-T.txt"))[:300])
        return 1
    n = 0
    for f in sorted(glob.glob(os.path.join(imagedir, "etc/ssh/sshd_config.d/*imgbuild*.conf"))):
        for line in conf_lines(f):
            if line.lower().startswith("match "):
                break
            k, _, v = line.partition(" ")
            k, v = k.lower(), " ".join(v.split()).lower()
            n += 1
            if v in live.get(k, []):
                ok(f"sshd {k} {v} ({os.path.basename(f)})")
            else:
                fail(f"sshd {k}: image sets {v!r} ({os.path.basename(f)}), sshd -T says {live.get(k)}")
    return n


def cmd_hardening(imagedir, bootdir):
    counts = {
        "sysctl": check_sysctl(imagedir, bootdir),
        "modules": check_modules(imagedir, bootdir),
        "nftables": check_nft(imagedir, bootdir),
        "sshd": check_sshd(imagedir, bootdir),
    }
    for what, n in counts.items():
        if n == 0:
            print(f"SKIP hardening/{what}: the image configures nothing to check (layer's hardening not in it)")
    return failed


def kubeadm_calls(recdir):
    calls = []
    for d in glob.glob(os.path.join(recdir, "kubeadm.*")):
        if not os.path.isdir(d):
            continue
        n = int(d.rsplit(".", 1)[1])
        args = read(os.path.join(d, "args")).splitlines()
        result = read(os.path.join(d, "result")).strip() if os.path.exists(os.path.join(d, "result")) else ""
        calls.append((n, d, args, result))
    return sorted(calls)


def cmd_kubeadm(recdir, sub, opts):
    calls = kubeadm_calls(recdir)
    print("kubeadm calls: " + "; ".join(f"#{n} {' '.join(a[:2])} -> {r or '?'}" for n, _, a, r in calls))
    mine = [c for c in calls if c[2] and c[2][0] == sub]
    good = [c for c in mine if c[3] == "ok"]
    if not good:
        fail(f"no successful `kubeadm {sub}` call")
        return 1
    n, d, args, _ = good[-1]
    ok(f"kubeadm {sub} succeeded (call #{n}, {len(mine)} attempt(s))")
    text = "\n".join(args)
    for f in sorted(os.listdir(d)):
        if f not in ("args", "result", "uptime", "etc-kubernetes.sha256"):
            text += "\n" + read(os.path.join(d, f))
    i = 0
    while i < len(opts):
        o = opts[i]
        if o == "--control-plane":
            (ok if "--control-plane" in args or re.search(r"^\s*controlPlane:", text, re.M) else fail)(
                f"kubeadm {sub} is a control-plane join"
            )
        elif o == "--no-control-plane":
            (fail if "--control-plane" in args or re.search(r"^\s*controlPlane:", text, re.M) else ok)(
                f"kubeadm {sub} is not a control-plane join"
            )
        elif o == "--attempts":
            i += 1
            want = int(opts[i])
            (ok if len(mine) == want else fail)(f"kubeadm {sub}: {len(mine)} attempt(s), expected {want}")
        elif o == "--pki":
            i += 1
            listing = read(os.path.join(d, "etc-kubernetes.sha256"))
            for item in opts[i].split(","):
                name, _, digest = item.partition("=")
                line = next((x for x in listing.splitlines() if x.endswith(" ./" + name)), None)
                if line is None:
                    fail(f"/etc/kubernetes/{name} not in place when kubeadm {sub} ran")
                elif digest and not line.startswith(digest):
                    fail(f"/etc/kubernetes/{name} differs from the cluster's secret")
                else:
                    ok(f"/etc/kubernetes/{name} pre-placed before kubeadm {sub}")
        elif o == "--expect":
            i += 1
            label, _, s = opts[i].partition("=")
            (ok if s in text else fail)(f"kubeadm {sub} was given the {label}")
        elif o == "--expect-kind":
            i += 1
            (ok if re.search(rf"^kind:\s*{opts[i]}\s*$", text, re.M) else fail)(
                f"kubeadm {sub} config holds kind {opts[i]}"
            )
        i += 1
    return failed


# The program each package must list (dpkg -L; /sbin and /usr/sbin are one directory on
# merged-/usr) and that must run in the VM: the guest's capture
# (ci/boot/guest/vendor-data) records `<program>.version`, its version query.
BINARIES = {
    "conntrack": "/usr/sbin/conntrack",
    "socat": "/usr/bin/socat",
    "ebtables": "/usr/sbin/ebtables-legacy",  # /usr/sbin/ebtables is an alternative
    "ethtool": "/usr/sbin/ethtool",
    "ipset": "/usr/sbin/ipset",
}


def usr_merged(path):
    short = path[4:] if path.startswith("/usr/") else path
    return {short, "/usr" + short}


def captured(pk, name):
    """(exit code, output) of a command the guest recorded, or None."""
    if not os.path.exists(os.path.join(pk, name + ".rc")):
        return None
    return int(read(os.path.join(pk, name + ".rc")).strip() or -1), read(os.path.join(pk, name))


def cmd_packages(bootdir, lock_path, base_path, archive_path):
    pk = os.path.join(bootdir, "packages")
    if not os.path.isdir(pk):
        fail(f"no package capture in {bootdir} (guest hook did not run it)")
        return 1
    with open(lock_path) as f:
        lock = json.load(f)["arches"]["amd64"]
    locked = {p["name"]: p for p in lock["packages"]}
    base = dict(line.split()[:2] for line in read(base_path).splitlines() if line.strip())
    archive = dict(line.strip().split("=", 1) for line in read(archive_path).splitlines() if line.strip())
    live = {}
    for line in read(os.path.join(pk, "dpkg-query.txt")).splitlines():
        f = line.split("\t")
        if len(f) == 3:
            live[f[0]] = (f[1], f[2])
    if not locked:
        fail("the lock installs no package")
    for name, p in sorted(locked.items()):
        kind = "requested" if p["requested"] else "dependency"
        if not p["requested"]:
            (fail if name in base else ok)(
                f"{name}: dependency missing from the base, installed from the archive"
                if name not in base
                else f"{name}: dependency the base has ({base[name]}) was installed again"
            )
        got = captured(pk, f"{name}.status")
        if got is None:
            fail(f"{name} ({kind}): not captured in the VM (add it to ci/boot/guest/vendor-data)")
            continue
        rc, text = got
        m = re.search(r"^Version: (.*)$", text, re.M)
        if rc == 0 and re.search(r"^Status: install ok installed$", text, re.M) and m and m[1] == p["version"]:
            ok(f"dpkg -s {name}: install ok installed, {m[1]} ({kind}, as locked)")
        else:
            fail(f"dpkg -s {name} (exit {rc}), locked {p['version']}: {text.strip()[:300]!r}")
        rc, text = captured(pk, f"{name}.verify") or (-1, "<not captured>")
        (ok if rc == 0 and not text.strip() else fail)(
            f"dpkg --verify {name}: " + ("clean" if rc == 0 and not text.strip() else f"exit {rc}: {text.strip()[:300]!r}")
        )
        rc, text = captured(pk, f"{name}.list") or (-1, "")
        files = text.splitlines()
        want = BINARIES.get(name)
        if rc != 0 or not files:
            fail(f"dpkg -L {name}: exit {rc}, {len(files)} path(s)")
        elif want and not usr_merged(want) & set(files):
            fail(f"dpkg -L {name}: {len(files)} paths, but not {want}")
        else:
            listed = sorted(usr_merged(want) & set(files))[0] if want else ""
            ok(f"dpkg -L {name}: {len(files)} paths" + (f", {listed} among them" if want else ""))
        if want:
            prog = os.path.basename(want)
            rc, text = captured(pk, f"{prog}.version") or (-1, "<not captured>")
            first = (text.strip().splitlines() or [""])[0]
            (ok if rc == 0 else fail)(f"{prog} runs in the VM (its version query exits {rc}): {first!r}")
        # The ld.so cache must know the shared libraries it installs into the linker's
        # directories (imgbuild-ldconfig.service at boot; private dirs use an RPATH).
        cache = read(os.path.join(pk, "ldconfig-p"))
        libdir = r"^(/usr)?/lib/(x86_64-linux-gnu/)?[^/]+\.so\.[0-9]+$"
        for lib in sorted({os.path.basename(x) for x in files if re.search(libdir, x)}):
            (ok if f"\t{lib} " in cache else fail)(f"ld.so cache lists {lib} ({name})")
    # The archive's packages the base already has: in the index, but not installed again.
    for name in sorted(archive):
        if name in locked or name not in base:
            continue
        lv = live.get(name, ("?", "?"))[0]
        (ok if lv == base[name] else fail)(
            f"{name}: in the archive and the base: not in the lock, dpkg keeps the base's {base[name]} (live {lv})"
        )
    rc, text = captured(pk, "dpkg-audit") or (-1, "<not captured>")
    (ok if rc == 0 and not text.strip() else fail)(f"dpkg --audit: exit {rc} {text.strip()[:300]!r}")
    rc, text = captured(pk, "apt-get-check") or (-1, "<not captured>")
    (ok if rc == 0 else fail)(f"apt-get check: exit {rc} {text.strip().splitlines()[-1:]!r}")
    if "ebtables" in locked:
        rc, text = captured(pk, "alternatives-ebtables") or (-1, "<not captured>")
        val = re.search(r"^Value: (.*)$", text, re.M)
        (ok if rc == 0 and val else fail)(
            f"update-alternatives --query ebtables: exit {rc}, value {val[1] if val else None}"
        )
        rc, text = captured(pk, "ebtables.version") or (-1, "<not captured>")
        first = (text.strip().splitlines() or [""])[0]
        (ok if rc == 0 else fail)(f"ebtables (the alternative) runs in the VM: exit {rc}: {first!r}")
    # One line for the boot test's summary.
    inst = ", ".join(f"{n} {p['version']}" for n, p in sorted(locked.items()))
    print(f"packages: {counts['ok']} ok, {counts['FAIL']} failed; locked and checked: {inst}")
    return failed


def cmd_runtime(bootdir, versions_path):
    """The REAL containerd (Debian's, repacked like upstream's tarball) runs under the
    product's unit and config.toml, with the real runc; the guest has no network."""
    want = dict(line.strip().split("=", 1) for line in read(versions_path).splitlines() if "=" in line)
    bootdir = os.path.join(bootdir, "runtime")
    rc, text = captured(bootdir, "containerd-active") or (-1, "<not captured>")
    (ok if text.strip() == "active" else fail)(f"containerd.service is {text.strip()!r}")
    rc, text = captured(bootdir, "ctr-version") or (-1, "<not captured>")
    server = text.split("Server:", 1)[1] if "Server:" in text else ""
    m = re.search(r"^\s*Version:\s*(\S+)", server, re.M)
    upstream = want.get("containerd", "?").split("-")[0]
    (ok if rc == 0 and m and m.group(1) == upstream else fail)(
        f"ctr version: the server is containerd {m.group(1) if m else '?'} (want {upstream}, exit {rc})"
    )
    rc, text = captured(bootdir, "runc-version") or (-1, "<not captured>")
    runc = want.get("runc", "?").split("-")[0]
    (ok if rc == 0 and f"runc version {runc}" in text else fail)(
        f"/usr/local/sbin/runc --version: {(text.strip().splitlines() or ['?'])[0]!r} (want {runc})"
    )
    rc, text = captured(bootdir, "net-probe") or (0, "<not captured>")
    (ok if rc != 0 else fail)(f"no network: a registry is unreachable from the guest (curl exit {rc})")
    return failed


def cmd_images(bootdir, recdir, tsv_path, boot):
    """The role's embedded images (IMAGES_TSV, read from the image before it booted) are in
    containerd's k8s.io namespace at their digests; the import ran once (boot 1) and
    imported nothing later; one ran as a container (boot 1); the kubeadm stand-in asked
    containerd for its images before init/join and found them."""
    boot = int(boot)
    want = [tuple(line.split("\t")) for line in read(tsv_path).splitlines() if line and not line.startswith("#")]
    rc, text = captured(os.path.join(bootdir, "runtime"), "ctr-images") or (-1, "")
    have = {tuple(f[0:3:2]) for f in (line.split() for line in text.splitlines()[1:]) if len(f) >= 3}
    missing = [f"{n}@{d}" for n, d in want if (n, d) not in have]
    (ok if rc == 0 and want and not missing else fail)(
        f"ctr -n k8s.io images ls: all {len(want)} embedded image names at their pinned digests"
        + (f"; missing: {missing[:3]}" if missing else "")
    )
    p = os.path.join(bootdir, "run-imgbuild", "images.json")
    doc = json.loads(read(p)) if os.path.exists(p) else {}
    phase, imported = doc.get("phase"), doc.get("imported")
    if boot == 1:
        (ok if phase == "done" and imported == len(want) else fail)(
            f"boot 1: imgbuild-images imported {imported} of {len(want)} names (phase {phase!r})"
        )
    else:
        (ok if phase == "present" and imported == 0 else fail)(
            f"boot {boot}: imgbuild-images imported nothing (phase {phase!r}, imported {imported})"
        )
    seconds = doc.get("seconds")
    bs = bootstrap_json(bootdir) or {}
    (ok if bs.get("images") == doc and doc else fail)("bootstrap.json carries the import status")
    if boot == 1:
        rc, text = captured(os.path.join(bootdir, "runtime"), "ctr-run") or (-1, "<not captured>")
        (ok if rc == 0 and text.strip() == "registry.k8s.io/pause:3.9 amd64" else fail)(
            f"ctr run of an imported image through runc: exit {rc}, {text.strip()[:80]!r}"
        )
        calls = [c for c in kubeadm_calls(recdir) if c[3] == "ok"]
        rec = read(os.path.join(calls[-1][1], "images")).strip() if calls and os.path.exists(
            os.path.join(calls[-1][1], "images")) else "<none>"
        (ok if rec.startswith("present:") else fail)(f"the kubeadm stand-in found its images in containerd: {rec[:100]}")
    print(f"images: {counts['ok']} ok, {counts['FAIL']} failed; {len(want)} names, import {seconds} s (boot {boot})")
    return failed


def captured_text(bootdir, name):
    p = os.path.join(bootdir, name)
    return read(p) if os.path.exists(p) else None


def opt_values(opts, name):
    return [opts[i + 1] for i, o in enumerate(opts[:-1]) if o == name]


def cmd_network(bootdir, opts):
    import ipaddress

    ip_json = captured_text(bootdir, "ip-addr.json")
    links = json.loads(ip_json) if ip_json else []
    by_mac = {l.get("address", "").lower(): l for l in links}
    for item in opt_values(opts, "--static"):
        mac, _, cidr = item.partition("=")
        mac = mac.lower()
        addr = str(ipaddress.ip_interface(cidr).ip)
        holders = [
            l["ifname"]
            for l in links
            for a in l.get("addr_info", [])
            if a.get("local") == addr
        ]
        link = by_mac.get(mac)
        if link is None:
            fail(f"no NIC with MAC {mac} in the VM ({sorted(by_mac)})")
            continue
        name = link["ifname"]
        on = [f'{a["local"]}/{a["prefixlen"]}' for a in link.get("addr_info", [])]
        (ok if cidr in on else fail)(f"{cidr} on the NIC {name} ({mac}): its addresses {on}")
        (ok if holders == [name] else fail)(f"{addr} on exactly one NIC: {holders}")
    for mac in opt_values(opts, "--dhcp"):
        link = by_mac.get(mac.lower())
        v4 = [a for a in (link or {}).get("addr_info", []) if a.get("family") == "inet"]
        dyn = [a for a in v4 if a.get("dynamic")]
        (ok if dyn else fail)(
            f"NIC {(link or {}).get('ifname', '?')} ({mac}) has a DHCP address: "
            + ", ".join(f'{a["local"]}/{a["prefixlen"]}' for a in v4)
        )
    resolv = captured_text(bootdir, "resolved-resolv.conf")
    if resolv is None:
        fail("no /run/systemd/resolve/resolv.conf in the VM (systemd-resolved not running?)")
        resolv = ""
    servers = re.findall(r"^nameserver\s+(\S+)", resolv, re.M)
    search = " ".join(re.findall(r"^search\s+(.*)$", resolv, re.M)).split()
    for ns in opt_values(opts, "--dns"):
        (ok if ns in servers else fail)(f"systemd-resolved uses nameserver {ns} (resolv.conf: {servers})")
    for d in opt_values(opts, "--search"):
        (ok if d in search else fail)(f"systemd-resolved searches {d} (resolv.conf: {search})")
    want_ntp = opt_values(opts, "--ntp")
    if want_ntp:
        conf = captured_text(bootdir, "timesyncd.conf") or ""
        m = re.search(r"^NTP=(.*)$", conf, re.M)
        got = (m[1] if m else "").split()
        (ok if got == want_ntp else fail)(f"timesyncd.conf.d (cloud-init's ntp module): NTP={' '.join(got)}")
        live = captured_text(bootdir, "timesync.txt") or ""
        m = re.search(r"^SystemNTPServers=(.*)$", live, re.M)
        got = (m[1] if m else "").split()
        (ok if got == want_ntp else fail)(f"systemd-timesyncd runs with SystemNTPServers={' '.join(got)}")
    return failed


def nft_sets(ruleset):
    """{set name: [elements]} of table inet imgbuild in `nft list ruleset` output."""
    out = {}
    for m in re.finditer(r"set (cluster_v[46]) \{(.*?)\n\t\}", ruleset, re.S):
        e = re.search(r"elements = \{(.*?)\}", m[2], re.S)
        out[m[1]] = [x.strip() for x in e[1].replace("\n", " ").split(",")] if e else []
    return out


def cmd_firewall(bootdir, args):
    import ipaddress

    ruleset = captured_text(bootdir, "nft-ruleset.txt") or ""
    sets = nft_sets(ruleset)
    if not sets:
        fail("no cluster_v4/cluster_v6 sets in the live ruleset (nft list ruleset)")
        return failed
    elems = []
    for name, items in sets.items():
        for x in items:
            try:
                elems.append(ipaddress.ip_network(x, strict=False))
            except ValueError:
                # an interval a-b
                lo, _, hi = x.partition("-")
                for n in ipaddress.summarize_address_range(ipaddress.ip_address(lo.strip()), ipaddress.ip_address(hi.strip())):
                    elems.append(n)
    print("live cluster sets: " + "; ".join(f"{k} {{ {', '.join(v)} }}" for k, v in sorted(sets.items())))
    nots = opt_values(args, "--not")
    wanted = [a for i, a in enumerate(args) if a != "--not" and (i == 0 or args[i - 1] != "--not")]
    for c in wanted:
        n = ipaddress.ip_network(c, strict=False)
        (ok if any(n.version == e.version and n.subnet_of(e) for e in elems) else fail)(
            f"the firewall's cluster set admits {c}"
        )
    for c in nots:
        n = ipaddress.ip_network(c, strict=False)
        (fail if any(n.version == e.version and n.overlaps(e) for e in elems) else ok)(
            f"the firewall's cluster set no longer admits the default {c}"
        )
    return failed


def cmd_secrets(raw, offset, needles_file, opts):
    """Scan the ext4 at OFFSET for each needle; map each hit to its file (debugfs icheck +
    ncheck). Hits in files under an --allow prefix are fine; elsewhere, or in blocks no
    file owns (deleted data), they fail."""
    import subprocess

    allow = opt_values(opts, "--allow")
    offset = int(offset)
    needles = [l.encode() for l in read(needles_file).splitlines() if l.strip()]
    fs = f"{raw}?offset={offset}"
    info = subprocess.run(["dumpe2fs", "-h", fs], capture_output=True, text=True).stdout
    bs = int(re.search(r"^Block size:\s+(\d+)", info, re.M)[1])
    hits = {}  # block -> needle index
    chunk = 64 << 20
    overlap = max(len(n) for n in needles)
    with open(raw, "rb") as f:
        f.seek(offset)
        pos = offset
        prev = b""
        while True:
            data = f.read(chunk)
            if not data:
                break
            buf = prev + data
            base = pos - len(prev)
            for k, n in enumerate(needles):
                i = buf.find(n)
                while i >= 0:
                    hits.setdefault((base + i - offset) // bs, k)
                    i = buf.find(n, i + 1)
            prev = buf[-overlap:]
            pos += len(data)
    if not hits:
        ok(f"no byte of the {len(needles)} secret lines anywhere on the disk")
        return failed
    blocks = sorted(hits)
    icheck = subprocess.run(["debugfs", "-R", "icheck " + " ".join(map(str, blocks)), fs],
                            capture_output=True, text=True).stdout
    owner = {}
    for line in icheck.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            owner[int(parts[0])] = parts[1] if parts[1].isdigit() else None
    inodes = sorted({i for i in owner.values() if i})
    paths = {}
    if inodes:
        ncheck = subprocess.run(["debugfs", "-R", "ncheck " + " ".join(inodes), fs],
                                capture_output=True, text=True).stdout
        for line in ncheck.splitlines()[1:]:
            parts = line.split(None, 1)
            if len(parts) == 2 and parts[0].isdigit():
                paths.setdefault(parts[0], parts[1].strip())
    allowed, bad, free = [], [], []
    for b in blocks:
        ino = owner.get(b)
        if not ino:
            free.append(b)
            continue
        path = paths.get(ino, f"<inode {ino}>")
        (allowed if any(path.startswith(a) for a in allow) else bad).append(f"{path} (block {b})")
    if allowed:
        ok(f"secret bytes only where allowed: {sorted(set(allowed))}")
    (fail if bad else ok)(
        f"no file outside {allow} holds secret bytes" + (f": found in {sorted(set(bad))}" if bad else "")
    )
    if free:
        # Deleted data no file owns: cloud-init truncates and rewrites obj.pkl (the cached
        # datasource, raw user-data inside) at each stage of a boot, so an earlier
        # version's blocks stay on disk once written back, before any unit of the node can
        # act. Reported, not failed: nothing reads them through the filesystem, and on a
        # control plane the same keys are in /etc/kubernetes/pki on this disk anyway.
        print(f"note secret bytes in {len(free)} free block(s) {free[:8]} (deleted data, see docs/cluster.md)")
    return failed


# ------------------------------------------------------------------ add-ons

# The charts imgbuild embeds itself (docs/addons.md), installed after every recipe add-on:
# the default StorageClass's chart before the backend (which may claim a volume), and with
# the gitops profile the backend's Argo CD Application after them (Argo CD's CRDs first).
EMBEDDED_AFTER = ["local-path", "backend"]
GITOPS_APP = "backend-app"
# The Secret each profile's chart reads (names and keys of the pinned charts' values:
# grafana 8.3 admin.existingSecret, the collector's extraEnvs secretKeyRef, Argo CD's
# argocd-secret, openstack-cinder-csi 2.30 secret.name / cloud.conf) and what it must
# hold, from the cluster directory.
def profile_secrets(cluster_dir, spec, on):
    import yaml

    sec = os.path.join(cluster_dir, "secrets")
    out = {}
    if "logging" in on:
        token = ((spec.get("addons") or {}).get("logging") or {}).get("token")
        out["logging"] = ("logging-otlp", {"authorization": f"Api-Token {token}"})
    if "monitoring" in on:
        g = yaml.safe_load(read(os.path.join(sec, "grafana-admin.yaml")))
        out["monitoring"] = ("grafana-admin", {"admin-user": g["user"], "admin-password": g["password"]})
    if "gitops" in on:
        a = yaml.safe_load(read(os.path.join(sec, "argocd-admin.yaml")))
        out["gitops"] = ("argocd-secret", {"admin.password": a["bcrypt"]})
    if "cinder" in on:
        out["cinder"] = ("cinder-csi-cloud-config", {"cloud.conf": read(os.path.join(sec, "cinder-cloud.conf"))})
    return out


def merge_values(base, over):
    """Helm's coalescing of values files: maps merge key by key, anything else replaces."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = merge_values(base.get(k), v) if k in base else v
        return out
    return over


def standin_default_classes(chart, values):
    """Default StorageClasses a profile's CSI chart creates with VALUES. The real charts
    cannot be downloaded here, so the stand-in renders nothing: read the switch the way the
    pinned chart's templates read it (openstack-cinder-csi 2.30 storageclass.yaml,
    proxmox-csi-plugin 0.2 storageClass[].annotations, hcloud-csi 2.17
    storageClasses[].defaultStorageClass). None: no rule for this chart."""
    if chart == "openstack-cinder-csi":
        sc = values.get("storageClass") or {}
        if not sc.get("enabled"):
            return []
        return [f"csi-cinder-sc-{k}" for k in ("delete", "retain") if (sc.get(k) or {}).get("isDefault")]
    if chart == "proxmox-csi-plugin":
        return [c.get("name") for c in values.get("storageClass") or []
                if (c.get("annotations") or {}).get("storageclass.kubernetes.io/is-default-class") == "true"]
    if chart == "hcloud-csi":
        return [c.get("name") for c in values.get("storageClasses") or [] if c.get("defaultStorageClass")]
    # The other charts of the recipe create no StorageClass upstream.
    if chart in ("cilium", "metrics-server", "ingress-nginx", "kube-prometheus-stack",
                 "opentelemetry-collector", "argo-cd"):
        return []
    return None


def cmd_addons(recdir, recipe_path, cluster_dir, userdata_path, image_dir):
    """What the add-on installer applied on the first control plane, from the stand-ins'
    records (calls.log; inputs.log: the sha256 of every file helm and kubectl read):
    every release the recipe and the cluster's profiles ask for, in order; each profile's
    Secret applied right before its chart; the values files and charts exactly the ones
    imgbuild made; exactly one default StorageClass in what the charts render."""
    import hashlib
    import shutil
    import subprocess
    import tarfile
    import tempfile

    import yaml

    recipe = yaml.safe_load(read(recipe_path))
    spec = yaml.safe_load(read(os.path.join(cluster_dir, "cluster.yaml")))
    addons_spec = spec.get("addons") or {}
    on = addons_spec.get("profiles") or []
    # The files user-data writes, by path (plain content, as imgbuild renders it).
    ud = yaml.safe_load(read(userdata_path))
    written = {f["path"]: f.get("content", "") for f in ud.get("write_files") or []}
    sha = lambda b: hashlib.sha256(b if isinstance(b, bytes) else b.encode()).hexdigest()  # noqa: E731

    calls = []
    for line in read(os.path.join(recdir, "calls.log")).splitlines():
        f = line.split()
        if len(f) >= 2:
            calls.append((f[0], f[1], f[2:]))
    inputs = {}
    p = os.path.join(recdir, "inputs.log")
    for line in (read(p) if os.path.exists(p) else "").splitlines():
        f = line.split(None, 3)
        if len(f) == 4:
            inputs.setdefault((f[0], f[1]), {})[f[3]] = f[2]

    # The expected releases: the recipe's add-ons whose profile is on (or that have
    # none), the CNI first, then by order; then the embedded charts.
    rows = [a for a in recipe["addons"] if not a.get("profile") or a["profile"] in on]
    rows.sort(key=lambda a: (not a.get("cni"), a["order"]))
    want = [a["release"] for a in rows] + EMBEDDED_AFTER + ([GITOPS_APP] if "gitops" in on else [])
    by_release = {a["release"]: a for a in recipe["addons"]}
    upgrades = [(i, c) for i, c in enumerate(calls) if c[1] == "helm" and c[2][:2] == ["upgrade", "--install"]]
    got = [c[2][2] for _, c in upgrades]
    (ok if got == want else fail)(
        f"add-on installer order (helm upgrade --install): {' '.join(got)}" + ("" if got == want else f"; want {' '.join(want)}")
    )
    profile_releases = [a["release"] for a in rows if a.get("profile")]
    core = [a["release"] for a in rows if not a.get("profile")]
    if on:
        last_core = max((got.index(r) for r in core if r in got), default=-1)
        firsts = [got.index(r) for r in profile_releases if r in got]
        (ok if firsts and min(firsts) > last_core and len(firsts) == len(profile_releases) else fail)(
            f"profiles {', '.join(on)}: releases {' '.join(profile_releases)} installed after the core add-ons {' '.join(core)}"
        )
    else:
        fail("the cluster turns no profile on: the boot test cannot show the profiles")

    def values_of(t, args):
        files = opt_values(args, "--values")
        seen = inputs.get((t, "helm"), {})
        merged, problems = {}, []
        for path in files:
            if path.startswith("/usr/share/imgbuild/addons/"):
                local = os.path.join(image_dir, path[len("/usr/share/imgbuild/addons/"):])
                text = read(local) if os.path.exists(local) else None
            else:
                text = written.get(path)
            if text is None:
                problems.append(f"{path}: neither in the image nor written by user-data")
                continue
            if seen.get(path) != sha(text):
                problems.append(f"{path}: helm read sha256 {seen.get(path)}, imgbuild made {sha(text)[:16]}…")
            merged = merge_values(merged, yaml.safe_load(text) or {})
        return files, merged, problems

    # Each chart: the file helm got is the image's, its values files are the image's and
    # user-data's, byte for byte; rendered offline (`helm template`) before the install.
    rendered_first, digests_ok = [], True
    for n, (i, (t, _, args)) in enumerate(upgrades):
        release, chart = args[2], args[3]
        if not any(c[1] == "helm" and c[2][:2] == ["template", release] for c in calls[:i]):
            rendered_first.append(release)
        local = os.path.join(image_dir, os.path.basename(chart))
        seen = inputs.get((t, "helm"), {}).get(chart)
        if not os.path.exists(local) or seen != sha(open(local, "rb").read()):
            fail(f"{release}: helm got chart {chart} with sha256 {seen}, not the image's")
            digests_ok = False
        _, _, problems = values_of(t, args)
        for pr in problems:
            fail(f"{release}: {pr}")
            digests_ok = False
    if digests_ok:
        ok(f"every chart and values file helm read is the one imgbuild made ({len(upgrades)} releases, sha256)")
    (fail if rendered_first else ok)(
        "every release rendered offline (helm template) before its install"
        + (f"; not: {rendered_first}" if rendered_first else "")
    )

    # Each profile's Secret: written by user-data, right for the cluster, applied by the
    # installer after the previous release and before the profile's own chart.
    import base64

    for prof, (name, keys) in profile_secrets(cluster_dir, spec, on).items():
        path = f"/etc/imgbuild/addons/secrets/{prof}.yaml"
        release = next((a["release"] for a in rows if a.get("profile") == prof), None)
        ns = by_release.get(release, {}).get("namespace")
        text = written.get(path)
        doc = yaml.safe_load(text) if text else None
        data = (doc or {}).get("data") or {}
        good = (doc or {}).get("kind") == "Secret" and doc["metadata"].get("name") == name \
            and doc["metadata"].get("namespace") == ns \
            and all(base64.b64decode(data.get(k, "")).decode(errors="replace") == v for k, v in keys.items())
        (ok if good else fail)(
            f"{prof}: user-data writes {path}: Secret {name} in {ns} holding the cluster's {', '.join(keys)}"
        )
        # The installer applies it before EACH release of the profile (gitops: Argo CD
        # and the backend's Application), each time the same bytes.
        releases = [a["release"] for a in rows if a.get("profile") == prof] + ([GITOPS_APP] if prof == "gitops" else [])
        applied = [
            (j, c) for j, c in enumerate(calls)
            if c[1] == "kubectl" and "apply" in c[2] and path in opt_values(c[2], "-f")
        ]
        for rel in releases:
            if rel not in got:
                fail(f"{prof}: release {rel} not installed, its Secret not checked")
                continue
            pos = got.index(rel)
            hi = upgrades[pos][0]
            lo = upgrades[pos - 1][0] if pos > 0 else -1
            ins = [j for j, c in applied if lo < j < hi and inputs.get((c[0], "kubectl"), {}).get(path) == sha(text or "")]
            (ok if len(ins) == 1 else fail)(
                f"{prof}: kubectl apply -f {path} (the same bytes) right before helm installs {rel}"
                + ("" if len(ins) == 1 else f" (applied at calls {[j for j, _ in applied]}, release at {hi})")
            )
        (ok if len(applied) == len(releases) else fail)(
            f"{prof}: its Secret applied {len(applied)} time(s), once per release of the profile ({len(releases)})"
        )

    # The logging profile's destination: a values file from user-data (the endpoint), the
    # header taken from the Secret's environment variable, never the token itself.
    if "logging" in on:
        lg = addons_spec.get("logging") or {}
        t, _, args = upgrades[got.index("logging")][1] if "logging" in got else (None, None, [])
        path = "/etc/imgbuild/addons/logging.yaml"
        _, merged, problems = values_of(t, args) if t else ([], {}, ["not installed"])
        exp = (((merged.get("config") or {}).get("exporters") or {}).get("otlphttp")) or {}
        header = (exp.get("headers") or {}).get("Authorization")
        leaks = [p for p, text in written.items()
                 if lg.get("token") in text and not p.startswith("/etc/imgbuild/addons/secrets/")]
        (ok if path in opt_values(args, "--values") and not problems and exp.get("endpoint") == lg.get("endpoint")
         and header == "${env:OTLP_AUTHORIZATION}" and not leaks else fail)(
            f"logging: helm got {path} (the same bytes as user-data's) with the cluster's OTLP endpoint; "
            f"the header from the Secret's variable ({header}), the token in no other file" + (f": {leaks}" if leaks else "")
        )
    if "gitops" in on:
        g = addons_spec.get("gitops") or {}
        pa, pb = (got.index(r) if r in got else -1 for r in ("argocd", GITOPS_APP))
        t, _, args = upgrades[pb][1] if pb >= 0 else (None, None, [])
        _, merged, problems = values_of(t, args) if t else ([], {}, ["not installed"])
        (ok if 0 <= pa < pb and not problems and merged.get("repoURL") == g.get("repo_url") else fail)(
            f"gitops: {GITOPS_APP} (the backend's Application, repoURL {merged.get('repoURL')}) installed after argocd"
        )

    # The default StorageClass of the installed set: every release rendered by a REAL helm
    # with the chart and values the installer gave it; a stand-in chart (the profile charts
    # cannot be downloaded here) by its values switch.
    helm = shutil.which("helm")
    if not helm:
        msg = "no helm on PATH: the installed charts cannot be rendered (ci/test.sh puts one there)"
        if os.environ.get("CI"):
            fail(msg)
            return failed
        print(f"SKIP {msg}")
        return failed
    defaults, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n, (i, (t, _, args)) in enumerate(upgrades):
            release, chart, ns = args[2], args[3], (opt_values(args, "--namespace") or ["default"])[0]
            local = os.path.join(image_dir, os.path.basename(chart))
            files, merged, _ = values_of(t, args)
            with tarfile.open(local) as tf:
                top = next(m for m in tf.getmembers() if m.name.count("/") == 1 and m.name.endswith("/Chart.yaml"))
                meta = yaml.safe_load(tf.extractfile(top).read())
            if meta.get("description") == "imgbuild test stand-in":
                got_classes = standin_default_classes(meta["name"], merged)
                if got_classes is None:
                    fail(f"{release}: stand-in chart {meta['name']} has no StorageClass rule in check.py")
                    continue
                defaults += got_classes
                if got_classes:
                    notes.append(f"{', '.join(got_classes)} ({meta['name']} stand-in, from its values)")
                continue
            vargs = []
            for k, path in enumerate(files):
                vf = os.path.join(tmp, f"{n}-{k}.yaml")
                with open(vf, "w") as f:
                    f.write(read(os.path.join(image_dir, os.path.basename(path)))
                            if path.startswith("/usr/share/") else written.get(path, ""))
                vargs += ["--values", vf]
            r = subprocess.run([helm, "template", release, local, "--namespace", ns, "--kube-version", "1.30.3", *vargs],
                               capture_output=True, text=True)
            if r.returncode != 0:
                fail(f"{release}: helm template failed: {r.stderr.strip()[:300]}")
                continue
            for d in yaml.safe_load_all(r.stdout):
                if isinstance(d, dict) and d.get("kind") == "StorageClass":
                    ann = (d.get("metadata") or {}).get("annotations") or {}
                    is_def = ann.get("storageclass.kubernetes.io/is-default-class") == "true"
                    notes.append(f"{d['metadata']['name']} ({meta['name']} rendered by helm, default {str(is_def).lower()})")
                    if is_def:
                        defaults.append(d["metadata"]["name"])
    csi = [p for p in on if p in ("cinder", "proxmox", "hcloud")]
    (ok if len(defaults) == 1 else fail)(
        f"exactly one default StorageClass in the installed set: {defaults} ({'; '.join(notes)})"
        + (f"; the {csi[0]} profile's, local-path's turned off" if csi else "")
    )
    print(f"addons: {counts['ok']} ok, {counts['FAIL']} failed; releases: {' '.join(got)}")
    return failed


def main():
    a = sys.argv[1:]
    if not a:
        sys.exit(__doc__)
    if a[0] == "bootstrap":
        sys.exit(cmd_bootstrap(a[1]))
    if a[0] == "hardening":
        sys.exit(cmd_hardening(a[1], a[2]))
    if a[0] == "packages":
        sys.exit(cmd_packages(*a[1:5]))
    if a[0] == "kubeadm":
        sys.exit(cmd_kubeadm(a[1], a[2], a[3:]))
    if a[0] == "runtime":
        sys.exit(cmd_runtime(a[1], a[2]))
    if a[0] == "images":
        sys.exit(cmd_images(*a[1:5]))
    if a[0] == "network":
        sys.exit(cmd_network(a[1], a[2:]))
    if a[0] == "firewall":
        sys.exit(cmd_firewall(a[1], a[2:]))
    if a[0] == "addons":
        sys.exit(cmd_addons(*a[1:6]))
    if a[0] == "secrets":
        sys.exit(cmd_secrets(a[1], a[2], a[3], a[4:]))
    sys.exit(__doc__)


if __name__ == "__main__":
    main()
