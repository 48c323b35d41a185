#!/usr/bin/env bash
# Writes run scripts for this lab's machines into local/ (untracked; the lab is built as a
# path: flake, so the flake sees them). The guests get an empty store image instead of the 9p
# shares, as the fixture lab and the NixOS lab do: a VM with a mounted 9p export cannot be
# snapshotted, and the CLI tests snapshot this lab. The image is made once (fixed UUID) and kept,
# so a restored guest finds the very image it had mounted.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
# Two labs may be prepared at once (a second lab dir whose prepare step runs this one).
exec 9>.prepare.lock
flock 9
repo=$(cd ../../.. && pwd)
guest=$("$repo/fixtures/guest/build.sh" | tail -n1)
hosts=grey-area=10.77.0.10,limiting-factor=10.77.0.12
store=$PWD/store/nix-store.img
if [ ! -f "$store" ]; then
    mkdir -p store/.empty
    mkfs=$(PATH=$PATH:/usr/sbin:/sbin command -v mkfs.ext4)
    "$mkfs" -q -L nix-store -U 6c616274-6573-742d-766d-2d6f6e6c7900 -d store/.empty \
        -E root_owner=0:0 "$store.new" 8M
    rmdir store/.empty
    mv "$store.new" "$store"
fi
rm -rf local.new && mkdir -p local.new
for m in grey-area=10.77.0.10 limiting-factor=10.77.0.12; do
    LABTEST_GUEST_DIR=$guest "$repo/fixtures/guest/mkrunvm.sh" local.new "${m%%=*}" "${m#*=}/24" "$hosts" 512 "$store" >/dev/null
done
rm -rf local && mv local.new local
