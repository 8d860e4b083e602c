"""`python -m attnx <command>` (also the `attnx` console script).

Commands: ``bench`` (kernels beside PyTorch's, see attnx.bench), ``gna-sim`` (the GNA speedup
simulator, see attnx.gna), ``info`` (what runs natively and what falls back to the reference).
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"bench": "benchmarks against PyTorch's kernels", "gna-sim": "GNA speedup-bound simulator",
                "info": "native kernels and reference fallbacks"}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        p = argparse.ArgumentParser(prog="attnx", description="attnx command line")
        p.add_argument("command", choices=sorted(commands), help="; ".join(f"{k}: {v}" for k, v in commands.items()))
        p.print_help() if not argv or argv[0] in ("-h", "--help") else p.parse_args(argv[:1])
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "bench":
        from .bench import main as bench_main
        return bench_main(rest)
    if cmd == "gna-sim":
        from .gna import main as gna_main
        return gna_main(rest)
    from . import info
    print(json.dumps(info(), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
