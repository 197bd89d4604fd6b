"""Execute every notebook in ``notebooks/`` at full size and export it for reading.

Each ``notebooks/NAME.ipynb`` is run in a real Jupyter kernel (``nbclient``, kernel
``python3``, working directory the repository root) and written, with its outputs, to
``build/notebooks/NAME.ipynb``; if ``nbconvert`` is installed, also to
``build/notebooks/NAME.html``. The committed notebooks are never modified.

Widget outputs (the ``tqdm.auto`` progress bars) are dropped from the copies: outside a
live kernel they only show their first frame ("0%").

Full size means the ``CI`` variable is removed from the kernel's environment, so the
notebooks' ``SMOKE = "CI" in os.environ`` cells choose their large sizes (pass
``--smoke`` to keep ``CI=1`` for a quick check). On a machine shared with other jobs,
``OMP_NUM_THREADS=1`` in the environment (the kernel inherits it) can make decoding
many times faster.

Usage::

    .venv/bin/python scripts/run_notebooks.py                 # every notebook
    .venv/bin/python scripts/run_notebooks.py 01_quickstart   # only those whose name contains a pattern
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
DEFAULT_OUT = REPO_ROOT / "build" / "notebooks"


def _parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("patterns", nargs="*", help="run only notebooks whose file name contains one of these")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds one cell may run (default: 3600)")
    parser.add_argument("--smoke", action="store_true", help="run with CI=1 (the notebooks' small sizes)")
    return parser.parse_args(argv)


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def drop_widget_outputs(nb) -> int:
    """Remove widget displays (progress bars) from every code cell; returns how many."""
    dropped = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = [o for o in cell.get("outputs", []) if WIDGET_VIEW not in o.get("data", {})]
        dropped += len(cell.get("outputs", [])) - len(kept)
        cell.outputs = kept
    nb.metadata.pop("widgets", None)
    return dropped


def main(argv=None) -> int:
    args = _parse_args(argv)
    try:
        import nbclient
        import nbformat
    except ImportError as err:
        print(f"run_notebooks: {err.name} is missing: pip install -e '.[dev]' (needs nbclient, nbformat, ipykernel)")
        return 2
    try:
        from nbconvert import HTMLExporter
    except ImportError:
        HTMLExporter = None
        print("run_notebooks: nbconvert is not installed; writing executed .ipynb files only (pip install nbconvert)")

    notebooks = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    if args.patterns:
        notebooks = [p for p in notebooks if any(pat in p.name for pat in args.patterns)]
    if not notebooks:
        print(f"run_notebooks: no notebooks matched in {NOTEBOOK_DIR}")
        return 1

    if args.smoke:
        os.environ["CI"] = "1"
    else:
        os.environ.pop("CI", None)  # the kernel inherits this environment: full sizes
    args.out.mkdir(parents=True, exist_ok=True)

    failed = []
    for path in notebooks:
        print(f"{path.name}: running ...", flush=True)
        start = time.perf_counter()
        nb = nbformat.read(path, as_version=4)
        client = nbclient.NotebookClient(
            nb, kernel_name="python3", timeout=args.timeout, resources={"metadata": {"path": str(REPO_ROOT)}}
        )
        error = None
        try:
            client.execute()
        except nbclient.exceptions.CellExecutionError as err:
            error = err  # still write what ran, so the failing cell can be read
        drop_widget_outputs(nb)
        executed = args.out / path.name
        nbformat.write(nb, executed)
        written = [executed]
        if HTMLExporter is not None:
            body, _ = HTMLExporter().from_notebook_node(nb)
            html_path = executed.with_suffix(".html")
            html_path.write_text(body, encoding="utf-8")
            written.append(html_path)
        elapsed = time.perf_counter() - start
        shown = ", ".join(str(p.relative_to(REPO_ROOT)) if p.is_relative_to(REPO_ROOT) else str(p) for p in written)
        if error is not None:
            failed.append(path.name)
            print(f"{path.name}: FAILED after {elapsed:.0f} s (partial output in {shown}):\n{error}", flush=True)
        else:
            print(f"{path.name}: ok in {elapsed:.0f} s -> {shown}", flush=True)

    if failed:
        print(f"run_notebooks: {len(failed)} of {len(notebooks)} failed: {', '.join(failed)}")
        return 1
    print(f"run_notebooks: {len(notebooks)} notebook(s) ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
