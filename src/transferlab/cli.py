"""What every stage script shares: argument parsing and turning known errors into one line.

A stage that fails on bad input prints ``error: <what, where>`` on stderr and exits 1, with
no traceback to scroll through; anything unexpected still raises with its full traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from transferlab.errors import BackboneError, ConfigError, DataError, FingerprintMismatch

EXPECTED_ERRORS = (ConfigError, DataError, BackboneError, FingerprintMismatch, FileNotFoundError)


def run_stage(main: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    args = parser.parse_args()
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    try:
        main(args)
    except EXPECTED_ERRORS as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(1) from None


def one_line(err: Exception) -> str:
    """The message of an expected error; a bare missing file (open() of an input an earlier
    stage writes) says which, and what makes it."""
    if isinstance(err, FileNotFoundError) and err.filename and str(err).startswith("[Errno"):
        return f"{err.filename}: not found; run dvc repro"
    return str(err).replace("\n", " ")
