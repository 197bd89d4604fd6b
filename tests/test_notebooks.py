"""The notebooks in ``notebooks/``: committed without outputs, importing only llmppl, running clean.

Every ``notebooks/*.ipynb`` is picked up automatically. The execution test runs each
notebook in a real Jupyter kernel (``nbclient``, kernel ``python3``: the kernelspec in
the venv, which runs the venv's Python) with ``CI=1`` set, so the notebook's
``SMOKE = "CI" in os.environ`` cell keeps its sizes tiny.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))

# Modules a notebook may import (top-level package names): llmppl and what it is built on,
# matplotlib for plots, and a few standard-library modules. IPython is allowed for its
# display helpers (``from IPython.display import ...``) only.
ALLOWED_MODULES = {"llmppl", "pyro", "torch", "numpy", "matplotlib"} | {
    "collections",
    "functools",
    "itertools",
    "math",
    "os",
    "re",
    "statistics",
    "sys",
    "time",
}
ALLOWED_IPYTHON = {"IPython.display"}

SMOKE_SWITCH = 'SMOKE = "CI" in os.environ'

# Seconds one cell may run under CI=1 before nbclient gives up on it.
CELL_TIMEOUT_S = 300


def _ids(paths):
    return [p.name for p in paths]


def _read(path: Path):
    nbformat = pytest.importorskip("nbformat")
    return nbformat.read(path, as_version=4)


def _code_cells(nb):
    return [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]


def _strip_magics(source: str) -> str:
    """Blank out IPython magics and shell escapes so the rest parses as Python."""
    lines = []
    for line in source.splitlines():
        stripped = line.lstrip()
        lines.append("" if stripped.startswith(("%", "!")) else line)
    return "\n".join(lines)


def _imported_modules(source: str) -> list[str]:
    """Dotted names of every module a code cell imports (``import a.b`` -> ``a.b``)."""
    names = []
    for node in ast.walk(ast.parse(_strip_magics(source))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative imports make no sense in a notebook
                names.append("." * node.level + (node.module or ""))
            else:
                names.append(node.module or "")
    return names


def _allowed(module: str) -> bool:
    top = module.split(".")[0]
    if top in ALLOWED_MODULES:
        return True
    return any(module == m or module.startswith(m + ".") for m in ALLOWED_IPYTHON)


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"


def test_import_rule():
    assert _imported_modules("import llmppl\nfrom llmppl import LM\nimport torch.nn as nn\n%matplotlib inline") == [
        "llmppl",
        "llmppl",
        "torch.nn",
    ]
    assert _allowed("IPython.display") and _allowed("pyro.poutine") and _allowed("math")
    assert _allowed("matplotlib.pyplot") and _allowed("numpy")
    assert not _allowed("IPython") and not _allowed("pandas") and not _allowed("transformers")
    assert not _allowed("llmppl_extra") and not _allowed("random")  # randomness comes from torch, seeded


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_without_outputs(path):
    nb = _read(path)
    dirty = [
        f"cell {i}: {len(c.get('outputs', []))} outputs, execution_count={c.get('execution_count')}"
        for i, c in _code_cells(nb)
        if c.get("outputs") or c.get("execution_count") is not None
    ]
    assert not dirty, (
        f"{path.name} is committed with outputs; strip them (Jupyter: Edit > Clear Outputs of All Cells, "
        f"then save; or `jupyter nbconvert --clear-output --inplace notebooks/{path.name}`):\n" + "\n".join(dirty)
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_imports_only_public_modules(path):
    nb = _read(path)
    bad = []
    for i, cell in _code_cells(nb):
        try:
            modules = _imported_modules(cell.source)
        except SyntaxError as err:
            bad.append(f"cell {i}: does not parse: {err}")
            continue
        bad.extend(f"cell {i}: imports {m!r}" for m in modules if not _allowed(m))
    assert not bad, (
        f"{path.name} may import only from llmppl (and {sorted(ALLOWED_MODULES - {'llmppl'})}, "
        f"{sorted(ALLOWED_IPYTHON)}):\n" + "\n".join(bad)
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_has_a_smoke_switch(path):
    # the execution test relies on it to keep sizes tiny
    sources = [c.source for _, c in _code_cells(_read(path))]
    assert any(SMOKE_SWITCH in src for src in sources), f"{path.name}: no code cell sets {SMOKE_SWITCH!r}"


def _needs_smollm2(nb) -> bool:
    return any("load_smollm2" in c.source for _, c in _code_cells(nb))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_executes_without_error(path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("CI", "1")  # the kernel inherits it: SMOKE sizes
    if "OMP_NUM_THREADS" not in os.environ:
        # SMOKE sizes are batches of a few sequences: extra intra-op threads only spin,
        # and on a machine shared with other jobs they make decoding many times slower.
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = _read(path)
    if _needs_smollm2(nb):
        from llmppl.models.hf import smollm2_gguf_path

        try:
            smollm2_gguf_path()
        except ImportError as err:
            pytest.skip(f"{path.name} loads SmolLM2: {err}")
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(REPO_ROOT)}},
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        pytest.fail(f"{path.name}: a cell raised:\n{err}", pytrace=False)


def test_run_notebooks_drops_progress_bars_from_the_exported_copies():
    import importlib.util

    nbformat = pytest.importorskip("nbformat")
    spec = importlib.util.spec_from_file_location("run_notebooks", REPO_ROOT / "scripts" / "run_notebooks.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    cell = nbformat.v4.new_code_cell("post = run()")
    bar = {"text/plain": "Importance:   0%|", script.WIDGET_VIEW: {"model_id": "1"}}
    cell.outputs = [
        nbformat.v4.new_output("display_data", data=bar),
        nbformat.v4.new_output("execute_result", data={"text/html": "<table></table>"}, execution_count=1),
    ]
    nb = nbformat.v4.new_notebook(cells=[cell, nbformat.v4.new_markdown_cell("text")])
    nb.metadata["widgets"] = {"state": {}}
    assert script.drop_widget_outputs(nb) == 1
    assert [list(o["data"]) for o in nb.cells[0].outputs] == [["text/html"]] and "widgets" not in nb.metadata
