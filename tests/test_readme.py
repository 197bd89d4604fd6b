"""The README's Python examples: valid Python in the project's format (what users copy)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_each_python_block_compiles_and_is_formatted(i, tmp_path):
    source = BLOCKS[i]
    compile(source, f"README.md python block {i}", "exec")
    # the environment's own ruff (the version the project pins through its dev extra)
    ruff = Path(sys.executable).with_name("ruff")
    ruff = str(ruff) if ruff.exists() else shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed")
    path = tmp_path / f"block{i}.py"
    path.write_text(source)
    out = subprocess.run(
        [ruff, "format", "--config", str(README.parent / "pyproject.toml"), "--diff", str(path)],
        capture_output=True,
        text=True,
        cwd=README.parent,
    )
    assert out.returncode == 0, f"README.md python block {i} is not in ruff's format:\n{out.stdout}{out.stderr}"
