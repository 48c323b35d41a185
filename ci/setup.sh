#!/usr/bin/env bash
# Prepares a Debian 12 machine for labtest's test suite and fixture lab: host packages, the
# fixture guest, and Kubernetes v1.20.2 built from Debian's source. Everything is cached under
# ${LABTEST_CACHE:-~/.cache/labtest}: on a machine that already ran it, this takes seconds.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

packages=(qemu-system-x86 qemu-utils socat cpio kmod busybox-static debootstrap e2fsprogs xz-utils
          iproute2 nix-bin procps
          chromium)  # the HTML run report is checked in a real headless browser
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    say "installing cargo-nextest"
    cargo install --locked cargo-nextest
fi

start=$(date +%s)
say "fixture guest"
"$here/fixtures/guest/build.sh" >/dev/null
if [ -x "$here/fixtures/k8s/build.sh" ]; then
    say "Kubernetes v1.20.2 from Debian's source package"
    "$here/fixtures/k8s/build.sh" >/dev/null
fi
say "ready in $(( $(date +%s) - start ))s"
