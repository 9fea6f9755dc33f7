#!/usr/bin/env bash
# Installs what the etcd side-by-side benchmark needs (Debian's etcd-server, and protoc with the
# well-known .proto files for the etcd client's generated gRPC code) when missing, then runs it;
# arguments go to the binary:
#
#   benches/peers/run-etcd.sh --runs 3 --seconds 5 --clients 1,64,256
set -euo pipefail
cd "$(dirname "$0")"

missing=()
[ -x /usr/bin/etcd ] || missing+=(etcd-server)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
[ -e /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
if [ ${#missing[@]} -gt 0 ]; then
    # Keep the package's etcd service from starting (containers have no init to start it, and
    # it would hold the default ports); only while installing, and only if no policy is set.
    policy=/usr/sbin/policy-rc.d
    created_policy=false
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod +x "$policy"
        created_policy=true
    fi
    remove_policy() { if $created_policy; then rm -f "$policy"; fi; }
    trap remove_policy EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
    remove_policy
    trap - EXIT
fi

CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}" \
    nice -n 10 cargo run --release --bin etcd_vs_iroh_raft -- "$@"
