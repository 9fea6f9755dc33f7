#!/usr/bin/env bash
# Installs what the emulated-network comparison (etcd and iroh-raft over the same emulated links)
# needs when missing: Debian's etcd-server, protoc with the well-known .proto files (the etcd
# client's generated gRPC code), iproute2 and iptables (the network lab); then builds the
# `network` binary and runs it as root (namespaces, iptables). Arguments go to the binary:
#
#   benches/peers/run-network.sh --nodes 3 --rtt-ms 0,50 --loss 0 --seconds 3 --warmup 1
#   benches/peers/run-network.sh          # 3,5 nodes; 0,10,50,100 ms; 0,1 %; 1,64,256 clients
set -euo pipefail
cd "$(dirname "$0")"

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)

missing=()
[ -x /usr/bin/etcd ] || missing+=(etcd-server)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
[ -e /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
command -v ip >/dev/null || missing+=(iproute2)
command -v iptables-restore >/dev/null || missing+=(iptables)
if [ ${#missing[@]} -gt 0 ]; then
    # Keep the package's etcd service from starting (containers have no init to start it, and
    # it would hold the default ports); only while installing, and only if no policy is set.
    policy=/usr/sbin/policy-rc.d
    created_policy=false
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
        "${sudo[@]}" chmod +x "$policy"
        created_policy=true
    fi
    remove_policy() { if $created_policy; then "${sudo[@]}" rm -f "$policy"; fi; }
    trap remove_policy EXIT
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}"
    remove_policy
    trap - EXIT
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
nice -n 10 cargo build --release --bin network
exec "${sudo[@]}" nice -n 10 "$CARGO_TARGET_DIR/release/network" "$@"
