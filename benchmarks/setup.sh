#!/usr/bin/env bash
# Installs what `make bench` and `python -m benchmarks.triple` need besides the venv, when it is
# missing.  Idempotent: a second run only checks.  Needs root (CI runs as root) or password-less
# sudo for the install step.
#
#   HAProxy (Debian's `haproxy`): the C L4 relay the `haproxy` topology chains twice (and, in
#   `mode http` with `proto h2`, the gRPC-aware relay of the Triple case, benchmarks/triple.py).
#   h2load (Debian's `nghttp2-client`): the C HTTP/2 load generator of the Triple case.
#   ZooKeeper (Debian's `zookeeper`, which pulls in Java): the full run learns the regproxy
#   topology's routes from a real registry and runs the control-side scale benchmark on it
#   (`--quick` uses memory:// and skips it, so a missing ZooKeeper is only fatal to a full run).
set -euo pipefail

ZK_JAR=/usr/share/java/zookeeper.jar          # from libzookeeper-java, a dependency of `zookeeper`
ZK_CONF=/etc/zookeeper/conf_example           # from `zookeeper` (log4j config on the classpath)

missing=()
command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
if [[ ! -f $ZK_JAR || ! -d $ZK_CONF ]] || ! command -v java >/dev/null 2>&1; then
    missing+=(zookeeper)
fi

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "bench-setup: haproxy, h2load and ZooKeeper present; nothing to install"
    exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "bench-setup: missing ${missing[*]}; run as root: apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
fi

echo "bench-setup: installing ${missing[*]} (apt-get update && apt-get install -y ${missing[*]})"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
# --no-install-recommends: HAProxy recommends liblua and vim add-ons the benchmark never uses.
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "bench-setup: installed ${missing[*]}"
