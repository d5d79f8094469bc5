"""``grasprune cache``: what the user cache holds, and clearing it."""

from __future__ import annotations

import argparse

from grasprune.cache import PARTS, cache_dir, cache_usage, clear_cache
from grasprune.formatting import megabytes


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "cache",
        help="show or clear the user cache (converted models, tokenized text, dense perplexities)",
        description=f"The user cache at $GRASPRUNE_CACHE (now {cache_dir()}): everything in it can be rebuilt.",
    )
    parser.add_argument("--clear", metavar="PART", default=None,
                        help=f"remove one part ({', '.join(PARTS)}) or all; a run using it meanwhile "
                             "rebuilds what it needs")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.clear is not None:
        parts = list(PARTS) if args.clear.strip().lower() == "all" else [p.strip() for p in args.clear.split(",")]
        freed = clear_cache(parts)
        for part, nbytes in freed.items():
            print(f"cleared {part}: {megabytes(nbytes)} freed")
        return 0
    print(f"cache: {cache_dir()}")
    usage = cache_usage()
    width = max(map(len, PARTS))
    for part, (files, nbytes) in usage.items():
        print(f"  {part:<{width}}  {files:>5} files  {megabytes(nbytes):>9}  {PARTS[part]}")
    print(f"  {'total':<{width}}  {sum(f for f, _ in usage.values()):>5} files  "
          f"{megabytes(sum(b for _, b in usage.values())):>9}")
    return 0
