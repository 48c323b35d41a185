#!/usr/bin/env bash
# Writes run scripts for this lab's machines into local/ (untracked; the lab is built as a
# path: flake, so the flake sees them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
repo=$(cd ../../.. && pwd)
guest=$("$repo/fixtures/guest/build.sh" | tail -n1)
hosts=grey-area=10.77.0.10,limiting-factor=10.77.0.12
rm -rf local.new && mkdir -p local.new
LABTEST_GUEST_DIR=$guest "$repo/fixtures/guest/mkrunvm.sh" local.new grey-area 10.77.0.10/24 "$hosts" 512 >/dev/null
LABTEST_GUEST_DIR=$guest "$repo/fixtures/guest/mkrunvm.sh" local.new limiting-factor 10.77.0.12/24 "$hosts" 512 >/dev/null
rm -rf local && mv local.new local
