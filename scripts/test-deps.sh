#!/usr/bin/env bash
# Installs the system packages the test suite needs, when they are missing.  Idempotent: a second run
# only checks.  Needs root (CI runs as root) or password-less sudo for the install step.
#
#   ZooKeeper 3.8 (Debian's `zookeeper`, which pulls in Java): the registry tests start a real server with
#   java -cp "/usr/share/java/*:/etc/zookeeper/conf_example" org.apache.zookeeper.server.quorum.QuorumPeerMain
#   docker-compose (Debian's `docker-compose`, 1.29): tests/test_compose.py validates docker-compose.yml
#   with `docker-compose config -q` (no Docker daemon needed)
#   iproute2 (`ip`): tests/test_pods.py builds pods from network namespaces, veth pairs and a bridge
#   curl: tests/test_docs.py runs the docs' curl examples as written against a real sidecar
#   libhessian-java (Caucho Hessian 4.0.38, /usr/share/java/hessian.jar) and javac (default-jdk-headless):
#   tests/test_metadata_info.py checks regproxy's hessian2 MetadataInfo against Java's own serializer
#   haproxy and nghttp2-client (h2load): tests/test_bench_triple_smoke.py runs the Triple benchmark's
#   topologies (HAProxy in HTTP/2 mode, h2load as the load generator) for a fraction of a second
#   chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver): tests/test_status_page.py
#   opens the admin port's status page in headless Chromium through selenium
set -euo pipefail

ZK_JAR=/usr/share/java/zookeeper.jar          # from libzookeeper-java, a dependency of `zookeeper`
ZK_CONF=/etc/zookeeper/conf_example           # from `zookeeper` (log4j config on the classpath)
HESSIAN_JAR=/usr/share/java/hessian.jar       # from libhessian-java

missing=()
if [[ ! -f $ZK_JAR || ! -d $ZK_CONF ]] || ! command -v java >/dev/null 2>&1; then
    missing+=(zookeeper)
fi

if ! command -v docker-compose >/dev/null 2>&1; then
    missing+=(docker-compose)
fi

if ! command -v ip >/dev/null 2>&1; then
    missing+=(iproute2)
fi

if ! command -v curl >/dev/null 2>&1; then
    missing+=(curl)
fi

if [[ ! -f $HESSIAN_JAR ]]; then
    missing+=(libhessian-java)
fi

if ! command -v javac >/dev/null 2>&1; then
    missing+=(default-jdk-headless)
fi

if ! command -v haproxy >/dev/null 2>&1 && [[ ! -x /usr/sbin/haproxy ]]; then
    missing+=(haproxy)
fi

if ! command -v h2load >/dev/null 2>&1; then
    missing+=(nghttp2-client)
fi

if [[ ! -x /usr/bin/chromium ]]; then
    missing+=(chromium)
fi

if [[ ! -x /usr/bin/chromedriver ]]; then
    missing+=(chromium-driver)
fi

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "test-deps: ZooKeeper present ($ZK_JAR, java: $(command -v java)), docker-compose present" \
        "($(command -v docker-compose)), ip present ($(command -v ip)), curl present ($(command -v curl))," \
        "Hessian present ($HESSIAN_JAR), javac present ($(command -v javac)), haproxy and h2load present," \
        "chromium and chromedriver present;" \
        "nothing to install"
    exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "test-deps: missing ${missing[*]}; run as root: apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
fi

# apt's own output (hundreds of lines, and the packages' install scripts' warnings about a home
# directory or a runlevel, which say nothing about regproxy) goes to a log, shown only on failure.
log=${TMPDIR:-/tmp}/regproxy-test-deps.log
echo "test-deps: installing ${missing[*]} (apt-get update && apt-get install -y ${missing[*]}; log: $log)"
export DEBIAN_FRONTEND=noninteractive
if ! { "${SUDO[@]}" apt-get update -q && "${SUDO[@]}" apt-get install -y -q "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "test-deps: installing ${missing[*]} failed (above; also in $log)" >&2
    exit 1
fi
echo "test-deps: installed ${missing[*]}"
