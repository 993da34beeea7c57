"""Write a synthetic shard corpus for the streaming benchmark (not committed: 100K samples at N_v 1024
are about 1.2 GB). Shards are named like data_gen's, so a brace pattern reads them:

    python benchmarks/make_corpus.py /tmp/corpus --samples 100000 --side 32
    python benchmarks/bench_train.py --streaming --shards '/tmp/corpus/shard-r00000-{000000..000195}.tar'
"""
from __future__ import annotations

import argparse

from _planted import write_synthetic_shards


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--side", type=int, default=32, help="grid side: N_v = side^2 (32: 1024 tokens)")
    ap.add_argument("--heads", type=int, default=0, help="per-head attention (H, N_v) float16 per sample")
    ap.add_argument("--per-shard", type=int, default=512)
    args = ap.parse_args()
    paths = write_synthetic_shards(args.out, args.samples, grids=[(1, args.side, args.side)],
                                   samples_per_shard=args.per_shard, num_heads=args.heads, prefix="shard-r00000")
    print(f"{len(paths)} shards: {paths[0]} .. {paths[-1]}")


if __name__ == "__main__":
    main()
