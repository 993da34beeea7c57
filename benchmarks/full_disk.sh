#!/usr/bin/env bash
# A real full disk in the middle of `python -m data_gen` (RELIABILITY.md): a small tmpfs fills, the run
# must stop with one line naming the file; the tmpfs is enlarged and the same command re-run; every item
# must then be in the output exactly once. Needs root (mount). Usage: bash benchmarks/full_disk.sh [SIZES...]
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
MNT=${MNT:-/tmp/full_disk_check}
mkdir -p "$MNT"
for size in "${@:-300k 520k 610k 777k}"; do
  for s in $size; do
    umount "$MNT" 2>/dev/null; mount -t tmpfs -o size="$s" tmpfs "$MNT" || exit 1
    cmd=(python -m data_gen out="$MNT/x" max_samples=120 shard_size=7 progress=false hydra.run.dir="$MNT/hydra")
    "${cmd[@]}" >/dev/null 2>"$MNT.err"
    echo "tmpfs $s: rc=$? $(tail -1 "$MNT.err")"
    mount -o remount,size=64m "$MNT"
    "${cmd[@]}" 2>/dev/null | tail -1
    python - "$MNT/x" <<'PY'
import glob, sys
from data_gen.writer import read_manifests, tar_keys
keys = [k for t in sorted(glob.glob(sys.argv[1] + "/*.tar")) for k in tar_keys(t)]
done = read_manifests(sys.argv[1])
written = sum(r["status"] == "written" for r in done.values())
print(f"  records {len(done)} (items 120), samples {len(keys)}, distinct {len(set(keys))}, written records {written}")
assert len(done) == 120 and len(keys) == len(set(keys)) == written, "lost or duplicated"
PY
  done
done
umount "$MNT"
