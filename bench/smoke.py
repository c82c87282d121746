"""`--smoke`: a bench's smallest run. CI runs every mode of every bench this way once
(tests/e2e/test_benches_smoke.py), so none rots: it must run and print its figures, which
mean nothing at this size (no warm-up or settling, a few blocks, tasks or rows)."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "the smallest run (CI: the bench runs and prints its figures; they mean nothing here)"


def add_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true", help=HELP)


def apply(args: argparse.Namespace, sizes: dict[str, Any]) -> bool:
    """With `--smoke`, the run's sizes become `sizes`; returns whether it is a smoke run."""
    if args.smoke:
        vars(args).update(sizes)
    return bool(args.smoke)
