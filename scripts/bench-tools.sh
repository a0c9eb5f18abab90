#!/usr/bin/env bash
# Installs what `make bench-check` needs (idempotent; fast when already there) and writes
# target/bench-tools.env for `make` to load:
#   - valgrind, from Debian (when run as root; fails otherwise, as nothing can be measured)
#   - gungraun-runner, of exactly the version of the gungraun crate in Cargo.lock (the
#     benchmark harness refuses any other), with `cargo install --locked` into a root
#     outside the clone, so a fresh clone (CI) reuses it: about 3.5 minutes the first time
#     on 2 cores, nothing after
#   - CARGO_TARGET_DIR for the benchmarks' release build, unless set: also outside the
#     clone, so a fresh clone rebuilds only this crate (under 2 minutes) rather than every
#     dependency and librdkafka (about 8 minutes on 2 cores)
# Both live under ~/.cache/sluice (SLUICE_BENCH_TOOLS to change it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p target

if ! command -v valgrind >/dev/null 2>&1; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "installing Debian's valgrind" >&2
        apt_install() {
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends valgrind >/dev/null
        }
        apt_install || { apt-get update -q >/dev/null && apt_install; }
    else
        echo "error: the benchmarks need valgrind (apt-get install valgrind)" >&2
        exit 1
    fi
fi

version=$(awk '$0 == "name = \"gungraun\"" { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
[[ -n "$version" ]] || { echo "error: no gungraun in Cargo.lock" >&2; exit 1; }
tools=${SLUICE_BENCH_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice}
root="$tools/gungraun-runner-$version"
if [[ "$("$root/bin/gungraun-runner" --version 2>/dev/null)" != "gungraun-runner $version" ]]; then
    echo "installing gungraun-runner $version into $root (once per machine)" >&2
    cargo install --quiet --locked --version "$version" --root "$root" gungraun-runner
fi

cat >target/bench-tools.env <<ENV
PATH=$root/bin:$PATH
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$tools/bench-target}
ENV
echo "bench tools: $(valgrind --version), $("$root/bin/gungraun-runner" --version), build in ${CARGO_TARGET_DIR:-$tools/bench-target}" >&2
