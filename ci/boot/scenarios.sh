# shellcheck shell=bash
# Scenarios of ci/boot-test.sh (sourced; uses its globals: repo work base_dir accel ...).
# shellcheck disable=SC2154 # those globals

py=/usr/bin/python3
check() { "$py" "$repo/ci/boot/check.py" "$@"; }
endpoint=10.0.2.15:6443 # slirp gives every VM this address; nothing leaves the VM
# The control planes' private network: a second slirp network (gateway .2, DNS .3).
private_net=192.168.76.0/24
private_gw=192.168.76.2
private_dns=192.168.76.3
ntp_servers=192.168.76.2,ntp.boottest.internal
# The opt-in add-on profiles (docs/addons.md): `lock` pins every profile's chart from the
# test world's repositories (testkit serves stand-in packages in each repository's
# index.yaml, proxmox-csi-plugin in the test registry), the control-plane image carries
# these, and the cluster turns them on (one CSI driver: cinder, whose StorageClass is
# then the default instead of local-path's).
lock_profiles=(monitoring logging gitops cinder proxmox hcloud)
boot_profiles=(monitoring logging gitops cinder)

# Everything the product makes, once for all scenarios: role images from the test
# mirror (the ordinary `imgbuild build --recipe --mirror` path), the cluster and seeds.
prepare() {
  local need_cp=0 need_worker=0 s role out img port
  for s in "${scenarios[@]}"; do
    case $s in cp-*) need_cp=1 ;; worker | late-join | broken-seed) need_worker=1 ;; esac
  done
  [ $((need_cp + need_worker)) -gt 0 ] || return 0

  # The product and the test world's builder (testkit/, shared with the Rust tests), in the
  # target dir `cargo test` already filled.
  cargo build --quiet -p imgbuild -p imgbuild-testkit --bins
  bin="$repo/target/debug/imgbuild"
  local testkit="$repo/target/debug/imgbuild-testkit"

  # The signed test apt archive (real Debian .debs, own key; cached like the base).
  archive_dir=$("$testkit" archive --packages ci/boot/archive-packages.txt)
  # The real containerd and runc (Debian 12's, in the upstream release layout; cached).
  runtime_dir=$("$testkit" runtime)
  # ipset: a TEST-ONLY extra request (ci/boot/archive-packages.txt says why).
  "$testkit" mirror --recipe image-recipes/ubuntu-24.04-k8s-v1.30.3.yaml --base "$base_dir/base.qcow2" \
    --standin ci/boot/stub/standin --archive "$archive_dir" --runtime "$runtime_dir" \
    --extra-package ipset --out "$work/mirror" >/dev/null
  cp "$archive_dir/versions" "$work/archive-versions"
  cp "$runtime_dir/versions" "$work/runtime-versions"
  # Loopback only; the port is picked by the kernel and written to a file.
  "$py" -c '
import functools, http.server, sys
h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
h.log_message = lambda *a: None
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), h)
open(sys.argv[2] + ".tmp", "w").write(str(s.server_port))
__import__("os").rename(sys.argv[2] + ".tmp", sys.argv[2])
s.serve_forever()' "$work/mirror/www" "$work/mirror/port" &
  # shellcheck disable=SC2034 # read by the EXIT trap of boot-test.sh
  server_pid=$! # killed by boot-test.sh's EXIT trap
  for _ in $(seq 100); do [ -s "$work/mirror/port" ] && break; sleep 0.1; done
  port=$(cat "$work/mirror/port")
  mirror_args=()
  while read -r h; do
    mirror_args+=(--mirror "$h=http://127.0.0.1:$port/${h#*://}")
  done <"$work/mirror/hosts.txt"
  start_registry
  # Each upstream registry's API under /v2/<host>/ of the test registry (Docker Hub's API
  # is registry-1.docker.io).
  local api
  while read -r h; do
    api=$h
    [ "$h" = docker.io ] && api=registry-1.docker.io
    mirror_args+=(--mirror "https://$api/v2/=http://127.0.0.1:$registry_port/v2/$h/")
  done <"$work/mirror/registries.txt"

  # The recipe's packages the ordinary way: the verified base into the cache (its dpkg
  # status is what the resolver subtracts), then `imgbuild lock` against the signed
  # archive; both role builds install exactly the locked set.
  local tl
  tl=$(date +%s)
  "$bin" fetch --recipe "$work/mirror/test-recipe.yaml" --arch amd64 --cache-dir "$work/imgcache" \
    "${mirror_args[@]}"
  local p profile_args=() lock_args=()
  for p in "${lock_profiles[@]}"; do lock_args+=(--profile "$p"); done
  for p in "${boot_profiles[@]}"; do profile_args+=(--profile "$p"); done
  "$bin" lock --recipe "$work/mirror/test-recipe.yaml" --arch amd64 --cache-dir "$work/imgcache" \
    "${mirror_args[@]}" "${lock_args[@]}"
  echo "fetch + lock: $(($(date +%s) - tl))s" >>"$work/times"
  for role in control-plane worker; do
    if [ "$role" = control-plane ] && [ $need_cp = 0 ]; then continue; fi
    if [ "$role" = worker ] && [ $need_worker = 0 ]; then continue; fi
    out="$work/images/$role"
    local tb
    tb=$(date +%s)
    local carry=()
    [ "$role" = worker ] || carry=("${profile_args[@]}")
    "$bin" build --recipe "$work/mirror/test-recipe.yaml" --role "$role" --arch amd64 \
      --cache-dir "$work/imgcache" "${mirror_args[@]}" "${carry[@]}" --output "$out"
    echo "image $role: built in $(($(date +%s) - tb))s" >>"$work/times"
    img=$(find "$out" -maxdepth 2 -name '*.qcow2' | sort | head -n1)
    [ -n "$img" ] || { echo "imgbuild build wrote no .qcow2 into $out"; ls -lR "$out"; return 1; }
    ln -sf "$img" "$work/images/$role.qcow2"
    # What the image configures, read offline before any boot (the hardening oracle).
    qemu-img convert -f qcow2 -O raw "$img" "$work/images/$role.raw"
    extract_kernel "$work/images/$role.raw" "$work/images/$role-kernel" >"$work/images/$role.kver"
    mkdir -p "$work/images/$role.etc/etc"
    for d in /etc/sysctl.d /etc/modules-load.d /etc/ssh/sshd_config.d; do
      disk_rdump "$work/images/$role.raw" cloudimg-rootfs "$d" "$work/images/$role.etc$(dirname "$d")" || true
    done
    disk_cat "$work/images/$role.raw" cloudimg-rootfs /etc/nftables.conf >"$work/images/$role.etc/etc/nftables.conf" \
      2>/dev/null || rm -f "$work/images/$role.etc/etc/nftables.conf"
    disk_cat "$work/images/$role.raw" cloudimg-rootfs "/lib/modules/$(cat "$work/images/$role.kver")/modules.builtin" \
      >"$work/images/$role.etc/modules.builtin" 2>/dev/null || true
    if disk_exists "$work/images/$role.raw" cloudimg-rootfs /etc/systemd/system/imgbuild-addons.service; then
      touch "$work/images/$role.has-addons"
      # The charts, values and index the installer reads (check.py addons compares what
      # helm got with them).
      rm -rf "$work/images/$role.addons"
      disk_rdump "$work/images/$role.raw" cloudimg-rootfs /usr/share/imgbuild/addons "$work/images/$role.addons-root"
      mv "$work/images/$role.addons-root/addons" "$work/images/$role.addons" && rm -rf "$work/images/$role.addons-root"
    fi
    # The names and digests of the embedded images, as the image carries them.
    disk_cat "$work/images/$role.raw" cloudimg-rootfs /usr/share/imgbuild/images/images.tsv \
      >"$work/images/$role.images.tsv" 2>/dev/null || rm -f "$work/images/$role.images.tsv"
    rm -f "$work/images/$role.raw"
  done

  # The product binary has no test seed (only test builds read IMGBUILD_TEST_SEED).
  local a
  for a in 1 2; do
    IMGBUILD_TEST_SEED=same "$bin" --quiet cluster init --name seedcheck --endpoint 10.9.9.9 \
      --control-planes 1 --workers 0 --dir "$work/seedcheck-$a" >/dev/null
  done
  if cmp -s "$work/seedcheck-1/secrets/ca.key" "$work/seedcheck-2/secrets/ca.key"; then
    echo "FAIL the product binary honours IMGBUILD_TEST_SEED (predictable CA keys)"
    return 1
  fi
  echo "ok   the product binary ignores IMGBUILD_TEST_SEED (two inits, two CA keys)"

  # Control planes: a private NIC with a static address on its own network, named by MAC,
  # and a public NIC on DHCP (Hetzner/OpenStack style); the address must land on the
  # named NIC only, with the nameservers and NTP servers the spec gives. Workers: DHCP.
  "$bin" cluster init --name boottest --endpoint "$endpoint" --control-planes 3 --workers 2 \
    --external-lb --node-cidr "$private_net" --interface ens4 --dns "$private_dns" \
    --dns-search boottest.internal --ntp "$ntp_servers" --dir "$work/cluster"
  # A short retry budget (the spec's own knob): the late join needs ~1 min of retries
  # under TCG, the broken seed must give up within a boot instead of after 30 minutes.
  sed -i 's/^\(  retry_budget_seconds:\) [0-9]*/\1 120/' "$work/cluster/cluster.yaml"
  grep -q '^  retry_budget_seconds: 120' "$work/cluster/cluster.yaml" \
    || { echo "cluster.yaml has no bootstrap.retry_budget_seconds to shorten"; return 1; }
  "$py" -c '
import sys, yaml
p, gw = sys.argv[1], sys.argv[2]
spec = yaml.safe_load(open(p))
for n in spec["nodes"]:
    i = int(n["name"].rsplit("-", 1)[1])
    if n["role"] == "worker":
        del n["address"], n["gateway"]
    else:
        n.update(gateway=gw, interface="52:54:00:76:00:1%d" % i, dhcp_interfaces=["52:54:00:10:00:1%d" % i])
# The profiles (boot_profiles above) with what each needs; TEST values (the guest has no
# network: nothing is ever sent to these addresses).
spec.setdefault("addons", {}).update(
    profiles=sys.argv[3].split(),
    logging={"endpoint": "https://boottest.live.dynatrace.invalid/api/v2/otlp", "token": sys.argv[4]},
    gitops={"repo_url": "https://git.boottest.invalid/platform/app.git", "revision": "main"},
    cinder={"credentials_file": "secrets/cinder-cloud.conf"},
)
yaml.safe_dump(spec, open(p, "w"), sort_keys=False)' "$work/cluster/cluster.yaml" "$private_gw" "${boot_profiles[*]}" \
    "dt0c01.BOOTTEST$(openssl rand -hex 20)"
  # The cinder profile's cloud.conf (0600 next to cluster.yaml, like a real one), with a
  # password the disk scan looks for.
  (umask 077 && printf '[Global]\nauth-url = https://keystone.boottest.invalid:5000/v3\nusername = boottest\npassword = %s\ndomain-name = Default\ntenant-name = boottest\nregion = RegionOne\n' \
    "cinder-$(openssl rand -hex 16)" >"$work/cluster/secrets/cinder-cloud.conf")
  # The node seeds are imgbuild's own ISO 9660 images (what cloud-init reads in every
  # node scenario), with the TEST-ONLY vendor-data added through --vendor-data.
  "$bin" cloud-init --cluster "$work/cluster/cluster.yaml" --all --out "$work/seeds" --seed iso \
    --vendor-data "$repo/ci/boot/guest/vendor-data"
  # Node names by role, in spec order: cp1 cp2 ... / worker1 worker2 ...
  "$py" -c '
import sys, yaml
spec = yaml.safe_load(open(sys.argv[1]))
for n in spec["nodes"]:
    print(n["role"], n["name"])' "$work/cluster/cluster.yaml" >"$work/nodes"
  # What a join must carry, computed here independently of imgbuild.
  tr -d '\n' <"$work/cluster/secrets/bootstrap-token" >"$work/expect-token"
  echo "sha256:$(openssl x509 -in "$work/cluster/secrets/ca.crt" -pubkey -noout \
    | openssl pkey -pubin -outform der | sha256sum | cut -d' ' -f1)" >"$work/expect-ca-hash"
  # The CA and service-account private keys, as the disk scan looks for them: every PEM
  # body line but the first (which starts the same for every P-256 key).
  # The profiles' secrets too: each value as plain text and as the base64 its Secret
  # carries (admin passwords, Argo CD's bcrypt hash, the logging token and its header,
  # the cinder password and cloud.conf).
  {
    for a in ca etcd-ca front-proxy-ca sa; do
      grep -v '^-----' "$work/cluster/secrets/$a.key" | tail -n +2
    done
    "$py" -c '
import base64, sys, yaml
d = sys.argv[1]
s = yaml.safe_load(open(sys.argv[2]))["addons"]
g = yaml.safe_load(open(d + "/grafana-admin.yaml"))
a = yaml.safe_load(open(d + "/argocd-admin.yaml"))
conf = open(d + "/cinder-cloud.conf").read()
plain = [g["password"], a["password"], a["bcrypt"], s["logging"]["token"]]
plain += [l.split("=", 1)[1].strip() for l in conf.splitlines() if l.startswith("password")]
b64 = [g["password"], a["bcrypt"], conf, "Api-Token " + s["logging"]["token"]]
for v in plain + [base64.b64encode(x.encode()).decode().rstrip("=")[:-2] for x in b64]:
    print(v)' "$work/cluster/secrets" "$work/cluster/cluster.yaml"
  } >"$work/secret-needles"
}

# A REAL registry (Debian's docker-registry) on loopback with the recipe's test images
# (`imgbuild-testkit mirror` made them, ci/boot/push-images.py pushes them).
start_registry() {
  local data="$work/registry"
  rm -rf "$data" && mkdir -p "$data"
  registry_port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cat >"$data/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $data/storage
http:
  addr: 127.0.0.1:$registry_port
  secret: imgbuild-boot-test
EOF
  docker-registry serve "$data/config.yml" >"$data/registry.log" 2>&1 &
  # shellcheck disable=SC2034 # read by the EXIT trap of boot-test.sh
  registry_pid=$!
  for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$registry_port/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
  "$py" ci/boot/push-images.py "http://127.0.0.1:$registry_port" "$work/mirror/images"
}

node_name() { awk -v r="$1" '$1 == r {print $2}' "$work/nodes" | sed -n "${2}p"; }

# A fresh disk for a scenario: a qcow2 overlay over the role image (never modified).
new_disk() {
  qemu-img create -q -f qcow2 -F qcow2 -b "$(readlink -f "$work/images/$2.qcow2")" "$1/disk.qcow2"
}

# Common first-boot assertions: cloud-init finished, bootstrap done, sentinel there.
assert_node_done() {
  local dir=$1 boot=$2 b="$1/$2.disk/boot-1" bad=0 state
  grep -q 'Cloud-init v\. .* finished at' "$dir/$boot.serial.log" && echo "ok   serial: cloud-init finished" \
    || { echo "FAIL serial: no 'Cloud-init ... finished' line"; bad=1; }
  grep -q '^status: done' "$b/cloud-init-status.txt" && echo "ok   cloud-init status: done" \
    || { echo "FAIL cloud-init status: $(head -n1 "$b/cloud-init-status.txt")"; bad=1; }
  state=$(check bootstrap "$b" | sed -n 's/^state=//p')
  if [ "$state" = "done" ]; then
    echo "ok   /run/imgbuild/bootstrap.json: state done"
  else
    echo "FAIL /run/imgbuild/bootstrap.json: state '${state}' ($(check bootstrap "$b" | sed -n 's/^reason=//p'))"
    bad=1
  fi
  [ -e "$b/sentinel" ] && echo "ok   /run/cluster-api/bootstrap-success.complete present" \
    || { echo "FAIL sentinel /run/cluster-api/bootstrap-success.complete missing"; bad=1; }
  grep -q 'IMGBUILD-TEST: boot 1: bootstrap=done sentinel=yes' "$dir/$boot.serial.log" \
    && echo "ok   serial: bootstrap=done sentinel=yes" || { echo "FAIL serial: no bootstrap=done sentinel=yes"; bad=1; }
  if [ -s "$b/failed-units.txt" ]; then
    echo "FAIL failed units: $(tr '\n' ' ' <"$b/failed-units.txt")"
    bad=1
  else
    echo "ok   no failed units"
  fi
  return $bad
}

# bootstrap.json of a later boot keeps the attempt count of the boot that ran kubeadm
# (it lives in /run; the count in /var/lib/imgbuild/bootstrap.state).
check_attempts_kept() { # BOOTDIR EXPECTED
  local a
  a=$(check bootstrap "$1" | sed -n 's/^json=//p' | "$py" -c 'import json,sys; print(json.load(sys.stdin).get("attempts"))')
  [ "$a" = "$2" ] && echo "ok   bootstrap.json after the reboot: attempts $a (kept)" \
    || { echo "FAIL bootstrap.json after the reboot: attempts '$a', expected $2"; return 1; }
}

# A failing bootstrap runs once per boot (cloud-init's runcmd must not start a second
# retry budget) and does not hold cloud-init up: "finished" comes before "failed".
check_runs_once() { # SERIAL_LOG
  local starts fin failed
  starts=$(grep -ac 'imgbuild-bootstrap: phase start' "$1" || true)
  [ "$starts" = 1 ] && echo "ok   serial: the bootstrap ran once during the boot" \
    || { echo "FAIL serial: the bootstrap started $starts times during one boot"; return 1; }
  fin=$(grep -an 'Cloud-init v\. .* finished at' "$1" | head -n1 | cut -d: -f1)
  failed=$(grep -an 'imgbuild-bootstrap: phase failed' "$1" | head -n1 | cut -d: -f1)
  if [ -n "$fin" ] && [ -n "$failed" ] && [ "$fin" -lt "$failed" ]; then
    echo "ok   serial: cloud-init finished (line $fin) before the bootstrap gave up (line $failed)"
  else
    echo "FAIL serial: cloud-init finished at line ${fin:-never}, the bootstrap failed at line ${failed:-never}"
    return 1
  fi
}

join_expectations() {
  echo --expect "token=$(cat "$work/expect-token")" --expect "endpoint=$endpoint" \
    --expect "CA hash=$(cat "$work/expect-ca-hash")"
}

pki_expectations() {
  local s="$work/cluster/secrets"
  _dg() { sha256sum "$s/$1" | cut -d' ' -f1; }
  echo "pki/ca.crt=$(_dg ca.crt),pki/ca.key=$(_dg ca.key),pki/sa.key=$(_dg sa.key),pki/sa.pub=$(_dg sa.pub),pki/front-proxy-ca.crt=$(_dg front-proxy-ca.crt),pki/front-proxy-ca.key=$(_dg front-proxy-ca.key),pki/etcd/ca.crt=$(_dg etcd-ca.crt),pki/etcd/ca.key=$(_dg etcd-ca.key)"
}

# The recipe's packages on the booted node (captured when booted with
# imgbuild_test.packages=1): dpkg -s/--verify/-L, each program runs, the dependency the
# base lacks installed, those it has left alone, dpkg and apt consistent.
check_packages() {
  check packages "$1" "$work/mirror/test-recipe.yaml.lock" "$base_dir/packages.txt" "$work/archive-versions"
}

# The real containerd (the product's unit and config.toml) and runc run; no network.
check_runtime() {
  check runtime "$1" "$work/runtime-versions"
}

# The embedded images (when the role image has them): in containerd at their digests,
# imported on the first boot only, one runs through runc, kubeadm found them.
check_images() { # DIR BOOT ROLE
  local dir=$1 boot=$2 role=$3
  if [ -f "$work/images/$role.images.tsv" ]; then
    check images "$dir/boot$boot.disk/boot-$boot" "$dir/boot$boot.disk" "$work/images/$role.images.tsv" "$boot"
  else
    echo "SKIP images: the $role image embeds none (build without image plan items)"
  fi
}

boot_node() { # DIR ROLE NODE BOOTNAME [EXTRA_CMDLINE] [NICS (see boot_vm)]
  local dir=$1 role=$2 node=$3 name=$4 extra=${5:-} nics=${6:-}
  [ -n "$node" ] || { echo "no $role node in the cluster spec"; return 1; }
  [ -f "$dir/disk.qcow2" ] || new_disk "$dir" "$role"
  [ -f "$dir/seed.iso" ] || cp "$work/seeds/$node/seed.iso" "$dir/seed.iso"
  echo "booting $node ($role) as $name, accel $accel"
  boot_vm "$dir" "$name" "$dir/disk.qcow2" "$dir/seed.iso" "$work/images/$role-kernel" "$extra" "$nics" \
    || { cat "$dir/boot-error"; return 1; }
  read_disk "$dir" "$name" "$dir/disk.qcow2" || { cat "$dir/boot-error"; return 1; }
}

# Control plane N's two NICs: public (DHCP, the default slirp network) and private.
cp_nics() { echo "52:54:00:10:00:1$1 52:54:00:76:00:1$1@$private_net"; }

# The static control plane N's network as the spec asks for it (check.py network).
check_cp_network() {
  local boot=$1 n=$2
  check network "$boot" --static "52:54:00:76:00:1$n=${private_net%.*}.1$n/24" --dhcp "52:54:00:10:00:1$n" \
    --dns "$private_dns" --search boottest.internal --ntp "${ntp_servers%,*}" --ntp "${ntp_servers#*,}"
}

# The live firewall admits the cluster's networks and no longer the image's defaults.
check_firewall() {
  check firewall "$1" "$private_net" 10.244.0.0/16 10.96.0.0/12 "${endpoint%:*}/32" \
    --not 172.16.0.0/12 --not fc00::/7
}

# No CA or service-account key byte on the disk outside /etc/kubernetes/pki (the raw
# copy read_disk kept with keep_raw=1), then drop the copy.
scan_disk_secrets() {
  local dir=$1 name=$2 off rc=0
  off=$(part_offset_by_label "$dir/$name.raw" cloudimg-rootfs) || return 1
  check secrets "$dir/$name.raw" "$off" "$work/secret-needles" --allow /etc/kubernetes/pki/ || rc=1
  rm -f "$dir/$name.raw"
  return $rc
}

# ------------------------------------------------------------------ scenarios

scenario_base() { # harness self-check: the bare base boots, runs the seed, powers off
  local dir=$1
  mkdir -p "$dir/src"
  printf '#cloud-config\n{}\n' >"$dir/src/user-data"
  printf 'instance-id: base-selfcheck\nlocal-hostname: base\n' >"$dir/src/meta-data"
  make_seed "$dir" "$dir/src"
  cp "$base_dir/base.qcow2" "$dir/base.qcow2"
  boot_vm "$dir" boot1 "$dir/base.qcow2" "$dir/seed.iso" "$work/base-kernel" "" || { cat "$dir/boot-error"; return 1; }
  read_disk "$dir" boot1 "$dir/base.qcow2" || { cat "$dir/boot-error"; return 1; }
  grep -q '^status: done' "$dir/boot1.disk/boot-1/cloud-init-status.txt"
  grep -q 'Cloud-init v\. .* finished at' "$dir/boot1.disk/boot-1/cloud-init-output.log"
  echo "ok   base boots, cloud-init done, hook captured and powered off"
}

scenario_worker() {
  local dir=$1 node bad=0 n1 n2
  node=$(node_name worker 1)
  boot_node "$dir" worker "$node" boot1 imgbuild_test.packages=1
  assert_node_done "$dir" boot1 || bad=1
  # shellcheck disable=SC2046 # word list
  check kubeadm "$dir/boot1.disk" join --no-control-plane --attempts 1 $(join_expectations) || bad=1
  check hardening "$work/images/worker.etc" "$dir/boot1.disk/boot-1" || bad=1
  check_packages "$dir/boot1.disk/boot-1" || bad=1
  check_runtime "$dir/boot1.disk/boot-1" || bad=1
  check_images "$dir" 1 worker || bad=1
  # DHCP node (its resolvers are the DHCP server's; slirp with restrict=on offers none):
  # the cluster's NTP servers still come through cloud-init's ntp module
  check network "$dir/boot1.disk/boot-1" --ntp "${ntp_servers%,*}" --ntp "${ntp_servers#*,}" || bad=1
  check_firewall "$dir/boot1.disk/boot-1" || bad=1
  [ $bad = 0 ] || echo "(first boot: FAILED checks above; the second boot runs anyway)"

  echo "--- second boot of the same disk"
  boot_node "$dir" worker "$node" boot2
  n1=$(cat "$dir/boot1.disk/kubeadm.count")
  n2=$(cat "$dir/boot2.disk/kubeadm.count")
  [ -d "$dir/boot2.disk/boot-2" ] && echo "ok   second boot reached the capture hook" \
    || { echo "FAIL no boot-2 capture"; bad=1; }
  [ "$n1" = "$n2" ] && echo "ok   second boot: kubeadm not run again ($n2 call(s) in total)" \
    || { echo "FAIL second boot ran kubeadm again ($n1 -> $n2 calls)"; bad=1; }
  local r1 r2
  # cloud-init writes the runcmd semaphore only when runcmd really runs (its log says
  # "Running module runcmd" on every boot, then "already ran").
  r1=$(grep -c 'sem/config_runcmd - wb' "$dir/boot1.disk/boot-1/cloud-init.log" || true)
  r2=$(grep -c 'sem/config_runcmd - wb' "$dir/boot2.disk/boot-2/cloud-init.log" || true)
  [ "$r1" = "$r2" ] && echo "ok   second boot: runcmd not run again" \
    || { echo "FAIL second boot ran runcmd again"; bad=1; }
  [ ! -s "$dir/boot2.disk/boot-2/failed-units.txt" ] && echo "ok   second boot: no failed units" \
    || { echo "FAIL second boot failed units: $(cat "$dir/boot2.disk/boot-2/failed-units.txt")"; bad=1; }
  check_images "$dir" 2 worker || bad=1
  check_attempts_kept "$dir/boot2.disk/boot-2" 1 || bad=1
  return $bad
}

scenario_cp_init() {
  # shellcheck disable=SC2034 # keep_raw is read by read_disk (bash's dynamic scope)
  local dir=$1 node bad=0 t_init t_add keep_raw=1
  node=$(node_name control-plane 1)
  boot_node "$dir" control-plane "$node" boot1 imgbuild_test.packages=1 "$(cp_nics 1)"
  assert_node_done "$dir" boot1 || bad=1
  check_cp_network "$dir/boot1.disk/boot-1" 1 || bad=1
  check_firewall "$dir/boot1.disk/boot-1" || bad=1
  scan_disk_secrets "$dir" boot1 || bad=1
  # shellcheck disable=SC2046 # word list
  check kubeadm "$dir/boot1.disk" init --attempts 1 --expect-kind InitConfiguration \
    --expect-kind ClusterConfiguration --expect "endpoint=$endpoint" --expect "version=v1.30.3" \
    --expect "token=$(cat "$work/expect-token")" --pki "$(pki_expectations)" || bad=1
  check_packages "$dir/boot1.disk/boot-1" || bad=1
  check_runtime "$dir/boot1.disk/boot-1" || bad=1
  check_images "$dir" 1 control-plane || bad=1
  check_etcd_snapshot "$dir/boot1.disk" || bad=1
  if [ -e "$work/images/control-plane.has-addons" ]; then
    t_init=$(cat "$dir"/boot1.disk/kubeadm.1/uptime 2>/dev/null || echo 0)
    t_add=$(awk '$2 == "helm" || $2 == "kubectl" {print $1; exit}' "$dir/boot1.disk/calls.log")
    if grep -q 'imgbuild-addons' "$dir/boot1.disk/boot-1/journal-imgbuild.txt" && [ -n "$t_add" ] \
      && awk -v a="$t_add" -v i="$t_init" 'BEGIN {exit !(a > i)}'; then
      echo "ok   add-on installer started after kubeadm init (init at ${t_init}s, first helm/kubectl at ${t_add}s)"
    else
      echo "FAIL add-on installer: not started after init (init ${t_init}s, helm/kubectl ${t_add:-never})"
      bad=1
    fi
    # The namespaces with their Pod Security labels are applied before the first chart.
    local t_ns t_helm
    t_ns=$(awk '$2 == "kubectl" && $3 == "apply" && /namespaces.yaml/ {print NR; exit}' "$dir/boot1.disk/calls.log")
    t_helm=$(awk '$2 == "helm" && $3 == "upgrade" {print NR; exit}' "$dir/boot1.disk/calls.log")
    if [ -n "$t_ns" ] && [ -n "$t_helm" ] && [ "$t_ns" -lt "$t_helm" ]; then
      echo "ok   add-on namespaces (Pod Security labels) applied before the first chart"
    else
      echo "FAIL add-on namespaces: applied at call ${t_ns:-never}, first helm upgrade at ${t_helm:-never}"
      bad=1
    fi
    # What the installer applied (the helm and kubectl stand-ins record every call and
    # the digest of every file they read): the recipe's releases and the cluster's
    # profiles in order, each profile's Secret right before its chart, one default
    # StorageClass.
    check addons "$dir/boot1.disk" "$work/mirror/test-recipe.yaml" "$work/cluster" \
      "$work/seeds/$node/user-data" "$work/images/control-plane.addons" || bad=1

    echo "--- second boot of the same disk (seed still attached: cloud-init stores user-data again)"
    boot_node "$dir" control-plane "$node" boot2 "" "$(cp_nics 1)"
    scan_disk_secrets "$dir" boot2 || bad=1
    local u1 u2 k1 k2
    u1=$(grep -c ' helm upgrade ' "$dir/boot1.disk/calls.log" || true)
    u2=$(grep -c ' helm upgrade ' "$dir/boot2.disk/calls.log" || true)
    k1=$(cat "$dir/boot1.disk/kubeadm.count")
    k2=$(cat "$dir/boot2.disk/kubeadm.count")
    [ -d "$dir/boot2.disk/boot-2" ] && echo "ok   second boot reached the capture hook" \
      || { echo "FAIL no boot-2 capture"; bad=1; }
    [ "$u1" = "$u2" ] && echo "ok   second boot: no add-on step repeated ($u2 helm upgrade call(s) in total)" \
      || { echo "FAIL second boot repeated add-on steps ($u1 -> $u2 helm upgrade calls)"; bad=1; }
    [ "$k1" = "$k2" ] && echo "ok   second boot: kubeadm init not run again" \
      || { echo "FAIL second boot ran kubeadm again ($k1 -> $k2 calls)"; bad=1; }
    check_images "$dir" 2 control-plane || bad=1
  else
    echo "FAIL add-on installer: imgbuild-addons.service is not in the control-plane image"
    bad=1
  fi
  return $bad
}

# The control plane's scheduled etcd snapshot: timer enabled and waiting; the service it
# starts took `etcdctl snapshot save` with kubeadm's etcd client certificate, verified it
# (`snapshot status`) and reported ok (the stand-in etcdctl records every call).
check_etcd_snapshot() { # DISKDIR
  local d=$1 line bad=0
  if grep -q '^ActiveState=active' "$d/boot-1/snapshot-timer.txt" 2>/dev/null \
    && grep -q '^UnitFileState=enabled' "$d/boot-1/snapshot-timer.txt"; then
    echo "ok   imgbuild-etcd-snapshot.timer enabled and active"
  else
    echo "FAIL imgbuild-etcd-snapshot.timer: $(tr '\n' ' ' <"$d/boot-1/snapshot-timer.txt" 2>/dev/null)"
    bad=1
  fi
  line=$(awk '$2 == "etcdctl" && / snapshot save /' "$d/calls.log" | head -n 1)
  case $line in
  *--endpoints=https://127.0.0.1:2379*--cacert=/etc/kubernetes/pki/etcd/ca.crt*--cert=/etc/kubernetes/pki/apiserver-etcd-client.crt*--key=/etc/kubernetes/pki/apiserver-etcd-client.key*"snapshot save /var/lib/imgbuild/etcd-snapshots/"*)
    echo "ok   etcd snapshot: etcdctl snapshot save with the apiserver-etcd-client certificate"
    ;;
  *)
    echo "FAIL etcd snapshot: no etcdctl snapshot save with kubeadm's etcd client certificate (${line:-no call})"
    bad=1
    ;;
  esac
  if grep -q '"result": "ok"' "$d/boot-1/etcd-snapshot.json" 2>/dev/null \
    && awk '($2 == "etcdutl" || $2 == "etcdctl") && / snapshot status /' "$d/calls.log" | grep -q .; then
    echo "ok   etcd snapshot verified (snapshot status) and reported ok in etcd-snapshot.json"
  else
    echo "FAIL etcd snapshot status: $(cat "$d/boot-1/etcd-snapshot.json" "$d/boot-1/snapshot-start.txt" 2>/dev/null | tr '\n' ' ')"
    bad=1
  fi
  return $bad
}

# A joining control plane holds the etcd join lock while kubeadm joins (the stand-ins
# record every call with the uptime: "T etcdctl ... lock ...", "T kubeadm join ...").
check_join_lock() { # RECDIR
  local calls=$1/calls.log t_lock t_join
  t_lock=$(awk '$2 == "etcdctl" && / lock / {print $1; exit}' "$calls")
  t_join=$(awk '$2 == "kubeadm" && $3 == "join" {print $1; exit}' "$calls")
  if [ -n "$t_lock" ] && [ -n "$t_join" ] && awk -v l="$t_lock" -v j="$t_join" 'BEGIN {exit !(l < j)}'; then
    echo "ok   join lock taken (etcdctl lock at ${t_lock}s) before kubeadm join (${t_join}s)"
  else
    echo "FAIL join lock: etcdctl lock at ${t_lock:-never}, kubeadm join at ${t_join:-never}"
    return 1
  fi
}

scenario_cp_join() {
  # shellcheck disable=SC2034 # keep_raw is read by read_disk (bash's dynamic scope)
  local dir=$1 node bad=0 keep_raw=1
  node=$(node_name control-plane 2)
  boot_node "$dir" control-plane "$node" boot1 "" "$(cp_nics 2)"
  assert_node_done "$dir" boot1 || bad=1
  check_cp_network "$dir/boot1.disk/boot-1" 2 || bad=1
  scan_disk_secrets "$dir" boot1 || bad=1
  # shellcheck disable=SC2046 # word list
  check kubeadm "$dir/boot1.disk" join --control-plane --attempts 1 $(join_expectations) \
    --pki "$(pki_expectations)" || bad=1
  check_join_lock "$dir/boot1.disk" || bad=1
  return $bad
}

scenario_late_join() { # the control plane is "late": the first 2 joins fail
  local dir=$1 node bad=0
  node=$(node_name worker 2)
  boot_node "$dir" worker "$node" boot1 "imgbuild_test.join_failures=2"
  assert_node_done "$dir" boot1 || bad=1
  # shellcheck disable=SC2046 # word list
  check kubeadm "$dir/boot1.disk" join --no-control-plane --attempts 3 $(join_expectations) || bad=1
  # All three attempts in ONE bootstrap run (its own retry loop, not a restart of the unit).
  local a
  a=$(check bootstrap "$dir/boot1.disk/boot-1" | sed -n 's/^json=//p' \
    | "$py" -c 'import json,sys; print(json.load(sys.stdin).get("attempts"))')
  [ "$a" = 3 ] && echo "ok   bootstrap.json: attempts 3 (retried within one run)" \
    || { echo "FAIL bootstrap.json: attempts '$a', expected 3 within one bootstrap run"; bad=1; }
  return $bad
}

# Disaster recovery: the first control plane, on a fresh disk with a seed made by
# `cloud-init --restore-url/--restore-sha256`, fetches the snapshot (served to the guest
# at 10.0.2.100 by ci/boot/serve-file.py), checks its hash, restores it with its own name
# and peer URL, and `kubeadm init` adopts the data directory.
scenario_cp_restore() {
  local dir=$1 node bad=0 snap sha line want
  node=$(node_name control-plane 1)
  snap="$dir/etcd-snapshot.db"
  echo "imgbuild-test etcd snapshot $(date +%s)" >"$snap"
  sha=$(sha256sum "$snap" | cut -d' ' -f1)
  "$bin" cloud-init --cluster "$work/cluster/cluster.yaml" --node "$node" --seed none --out "$dir/src" \
    --restore-url "http://10.0.2.100/etcd-snapshot.db" --restore-sha256 "$sha" >/dev/null
  make_seed "$dir" "$dir/src/$node"
  # shellcheck disable=SC2034 # read by boot_vm (bash's dynamic scope)
  local guestfwd="$py $repo/ci/boot/serve-file.py $snap"
  boot_node "$dir" control-plane "$node" boot1 "" "$(cp_nics 1)"
  assert_node_done "$dir" boot1 || bad=1
  line=$(awk '($2 == "etcdutl" || $2 == "etcdctl") && / snapshot restore /' "$dir/boot1.disk/calls.log" | head -n 1)
  want="snapshot restore /var/lib/imgbuild/restore/snapshot.db --name $node --initial-cluster $node=https://192.168.76.11:2380 --initial-advertise-peer-urls https://192.168.76.11:2380 --data-dir /var/lib/etcd.restore"
  case $line in
  *"$want") echo "ok   etcd restored from the fetched snapshot as the one member $node (https://192.168.76.11:2380)" ;;
  *) echo "FAIL etcd restore: want '$want', got '${line:-no call}'"; bad=1 ;;
  esac
  line=$(awk '$2 == "kubeadm" && $3 == "init"' "$dir/boot1.disk/calls.log" | head -n 1)
  case $line in
  *--ignore-preflight-errors=DirAvailable--var-lib-etcd*) echo "ok   kubeadm init adopts the restored /var/lib/etcd" ;;
  *) echo "FAIL kubeadm init without the DirAvailable--var-lib-etcd skip: '${line:-no call}'"; bad=1 ;;
  esac
  if grep -q 'phase etcd-restore: etcd restored from snapshot' "$dir/boot1.serial.log" "$dir/boot1.disk/boot-1/"journal*.txt 2>/dev/null; then
    echo "ok   bootstrap reported the restore"
  else
    echo "FAIL no 'phase etcd-restore' line from the bootstrap"
    bad=1
  fi
  return $bad
}

scenario_broken_seed() { # a wrong token format must fail the node, readably
  local dir=$1 node state reason
  node=$(node_name worker 1)
  mkdir -p "$dir/src"
  cp "$work/seeds/$node/"* "$dir/src/"
  "$py" "$repo/ci/boot/break-seed.py" "$dir/src/user-data" "$(cat "$work/expect-token")"
  make_seed "$dir" "$dir/src"
  boot_node "$dir" worker "$node" boot1
  if assert_node_done "$dir" boot1; then
    echo "FAIL the node with a broken token reported success: the assertions cannot fail"
    return 1
  fi
  echo "ok   (expected) the node assertions above failed"
  state=$(check bootstrap "$dir/boot1.disk/boot-1" | sed -n 's/^state=//p')
  reason=$(check bootstrap "$dir/boot1.disk/boot-1" | sed -n 's/^reason=//p')
  [ "$state" = failed ] || [ "$state" = error ] || { echo "FAIL bootstrap.json state '$state', expected failed"; return 1; }
  [ -n "$reason" ] || { echo "FAIL bootstrap.json gives no reason"; return 1; }
  echo "ok   bootstrap.json: state $state, reason: $reason"
  grep -qi 'token' <<<"$reason" || { echo "FAIL the reason does not name the token"; return 1; }
  echo "ok   the reason names the token"
  check_runs_once "$dir/boot1.serial.log"
}
