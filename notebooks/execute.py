"""Execute a notebook top to bottom with nbclient and (by default) save it in place with its outputs.

    python notebooks/execute.py                       # full setting; rewrites notebooks/tutorial.ipynb
    python notebooks/execute.py --fast --no-save      # the quick setting the tests use; saves nothing
    python notebooks/execute.py --threads 1           # on a busy machine: one torch thread

The kernel is the ``python3`` kernelspec, which ipykernel provides and jupyter_client resolves to
the interpreter running this script, so the notebook sees the same packages. The notebook runs in
its own folder (``notebooks/``), as it does when opened in Jupyter. ``--fast`` sets
``REGCORE_TUTORIAL_FAST=1``, which the tutorial reads to shrink its training run and image sizes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
TUTORIAL = HERE / "tutorial.ipynb"
FAST_ENV = "REGCORE_TUTORIAL_FAST"


@contextmanager
def _environment(overrides: dict[str, str]):
    """Set environment variables for the kernel we start (it inherits ours), then restore them."""
    previous = {key: os.environ.get(key) for key in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run(
    nb: nbformat.NotebookNode, cwd: str | os.PathLike, fast: bool = False, timeout: int = 600, threads: int | None = None
) -> nbformat.NotebookNode:
    """Run every cell of ``nb`` in a fresh kernel started in ``cwd``; fills in and returns ``nb``.

    Args:
        fast: set ``REGCORE_TUTORIAL_FAST=1`` in the kernel's environment.
        timeout: seconds allowed per cell.
        threads: torch CPU threads in the kernel (``OMP_NUM_THREADS``); None leaves torch's default.
            On a machine busy with other work, 1 is much faster than several threads fighting
            for the same cores.

    Raises:
        nbclient.exceptions.CellExecutionError: a cell raised; the message names the cell and the error.
        nbclient.exceptions.CellTimeoutError: a cell ran longer than ``timeout``.
    """
    overrides = {FAST_ENV: "1" if fast else "0"}
    if threads is not None:
        overrides["OMP_NUM_THREADS"] = str(threads)
    with _environment(overrides):
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(cwd)}},
            record_timing=False,  # keep the committed notebook's diffs to its outputs
        )
        client.execute()
    return nb


def execute(
    path: str | os.PathLike = TUTORIAL, fast: bool = False, timeout: int = 600, threads: int | None = None
) -> nbformat.NotebookNode:
    """Read the notebook at ``path`` and :func:`run` it in its own folder; the file is not changed."""
    path = Path(path)
    return run(nbformat.read(path, as_version=4), path.parent, fast, timeout, threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", nargs="?", type=Path, default=TUTORIAL)
    parser.add_argument("--fast", action="store_true", help=f"set {FAST_ENV}=1 (small training run and images)")
    parser.add_argument("--no-save", action="store_true", help="execute only; leave the file unchanged")
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads in the kernel (default: torch's)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    nb = execute(args.notebook, fast=args.fast, timeout=args.timeout, threads=args.threads)
    elapsed = time.perf_counter() - start
    if not args.no_save:
        nbformat.write(nb, args.notebook)
    print(f"executed {args.notebook} ({'fast' if args.fast else 'full'} setting) in {elapsed:.0f} s{'' if args.no_save else '; saved'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
