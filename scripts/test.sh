#!/usr/bin/env bash
# Warden's whole test suite, from a fresh clone: installs what the tests need, then runs the
# gates (format, lints) and every test under cargo-nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests use. Installed only when missing, so a developer's second run is quick.
need_pkgs=()
# prometheus: promtool and a Prometheus server for the /metrics tests (crates/warden/tests/metrics.rs).
# chromium: headless browser for the dashboard test (crates/warden/tests/dashboard.rs).
# nftables, iproute2: network namespaces and packet drops for the chaos scenarios
#   (crates/warden/tests/chaos.rs; as root each agent runs in its own namespace).
# stress-ng: CPU and memory pressure faults of the chaos harness.
# haproxy: the real load balancer of the traffic-removal tests (crates/warden/tests/haproxy.rs).
# protobuf-compiler: protoc, which etcd-client's build script runs (warden-store feature `etcd`).
# etcd-server: the real etcd clusters of the etcd store and election tests
#   (crates/warden-store/src/etcd/tests.rs, crates/warden-store/tests/etcd_election.rs), of the
#   replicated control plane's end-to-end tests (crates/warden/tests/ha.rs) and of the
#   leader-failover chaos scenario (crates/warden/tests/chaos.rs).
# systemd: systemd-analyze, which checks the Debian package's units (crates/warden/tests/package.rs).
packages=(prometheus chromium nftables iproute2 stress-ng haproxy protobuf-compiler etcd-server systemd)
for pkg in "${packages[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_pkgs[@]}"
fi

# kubernetes-validate and yamllint (PyPI, pinned) check the Kubernetes manifests in
# deploy/kubernetes (crates/warden/tests/manifests.rs); they live in a virtualenv under target/.
pyenv_dir="target/pyenv"
py_tools=(kubernetes-validate==1.37.0 yamllint==1.38.0)
if ! "$pyenv_dir/bin/python" -m pip show kubernetes-validate yamllint >/dev/null 2>&1; then
    if ! python3 -m venv "$pyenv_dir" 2>/dev/null; then
        $sudo_cmd apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq python3-venv
        /usr/bin/python3 -m venv "$pyenv_dir"
    fi
    "$pyenv_dir/bin/python" -m pip install -q "${py_tools[@]}"
fi

export CARGO_INCREMENTAL=0
export CARGO_TERM_COLOR=never

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

echo "== warden-core must not depend on tokio"
core_tree=$(cargo tree -p warden-core -e normal --locked)
if grep -q 'tokio' <<<"$core_tree"; then
    echo "warden-core depends on tokio" >&2
    exit 1
fi

echo "== one rustls crypto provider (ring) in the warden binary"
warden_tree=$(cargo tree -p warden -e normal --all-features --locked)
if grep -qE '^.*(aws-lc-rs|aws-lc-sys) v' <<<"$warden_tree"; then
    echo "the warden binary pulls in aws-lc (a second crypto provider); see docs/security.md" >&2
    exit 1
fi

echo "== warden-store's default build must not depend on etcd-client"
store_tree=$(cargo tree -p warden-store -e normal --locked)
if grep -q 'etcd-client' <<<"$store_tree"; then
    echo "warden-store depends on etcd-client without its etcd feature" >&2
    exit 1
fi

echo "== cargo nextest"
# Every feature: warden-store's etcd back end and its tests against real etcd, and the `warden`
# binary with etcd (the replicated control plane's tests: ha.rs, the leader-failover scenario).
cargo nextest run --workspace --all-features --locked --no-fail-fast

echo "== doctests"
cargo test --workspace --doc --all-features --locked

# Fuzzing, bounded (about 20 s per target plus the instrumented build). FUZZ_SECONDS=0 skips it.
if [ "${FUZZ_SECONDS:-20}" != "0" ]; then
    echo "== fuzz"
    ./scripts/fuzz.sh
fi
