"""The ``minimaskrcnn`` command.

Subcommands:
    tiers       which kernel tiers can run on this machine, and why not for the others

Errors are printed as one line on stderr with a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import sys


def _cmd_tiers(args: argparse.Namespace) -> int:
    from minimaskrcnn import backend

    for tier in backend.TIERS:
        reason = backend.tier_unavailable_reason(tier)
        print(f"{tier:6s} {'available' if reason is None else 'unavailable: ' + reason}")
    print(f"default for NumPy arrays: {backend.default_tier()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minimaskrcnn",
        description="Mask R-CNN from scratch: NumPy reference, Numba and CUDA kernels.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("tiers", help="list the kernel tiers available on this machine")
    p.set_defaults(func=_cmd_tiers)
    return parser


class CLIError(Exception):
    """An error the command reports as one line (bad path, bad argument, ...)."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (CLIError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"minimaskrcnn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
