#!/usr/bin/env python3
"""Benchmarks: `python scripts/bench.py SUITE [...]`, SUITE one of the keys of SUITES below.

Each figure is printed next to a baseline measured in the same run (these machines are noisy), as
a ratio or a difference. Never used by tests.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

SUITES = {
    "check": "bench_check",
    "run": "bench_run",
    "ab": "bench_ab",
    "retention": "bench_retention",
    "docker": "bench_docker",
    "cache": "bench_cache",
    "workspace": "bench_workspace",
    "globs": "bench_globs",
    "secrets": "bench_secrets",
    "remote": "bench_remote",
    "hosts": "bench_hosts",
}


def main(argv: list[str]) -> int:
    if len(argv) < 1 or argv[0] not in SUITES:
        print(f"usage: bench.py {{{'|'.join(SUITES)}}} [args...]", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    module = importlib.import_module(SUITES[argv[0]])
    return int(module.main(argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
