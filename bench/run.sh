#!/usr/bin/env bash
# Corral, etcd and ZooKeeper side by side on this machine, in one run: installs what is
# missing, builds Corral and the driver, runs every workload against a three-member
# cluster of each system on loopback, and writes docs/benchmarks.md, its charts and CSV.
#
#   bench/run.sh                      # everything, as published (about 11 minutes on 2 cores)
#   bench/run.sh --seconds 1 --reps 1 # a quick look; extra flags go to `corral-bench all`
#
# Needs Debian's packages etcd-server, zookeeper (and a Java runtime) and
# protobuf-compiler; installs them with apt-get when missing and running as root.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v etcd >/dev/null || missing+=(etcd-server etcd-client)
[ -f /usr/share/java/zookeeper.jar ] || missing+=(zookeeper)
command -v java >/dev/null || missing+=(default-jre-headless)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "bench/run.sh: missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root" >&2
        exit 1
    fi
    echo "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The binary as shipped (deploy/image): statically linked, so that its footprint counts
# the C library it carries and not every page of the shared ones it would map.
target=x86_64-unknown-linux-gnu
RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --quiet --locked --target "$target" --bin corral
cargo build --release --quiet --manifest-path bench/Cargo.toml

command_line="bench/run.sh${*:+ $*}"
exec bench/target/release/corral-bench all \
    --corral "target/$target/release/corral" \
    --out docs \
    --command-line "$command_line" \
    "$@"
