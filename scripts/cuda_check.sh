#!/usr/bin/env bash
# Compile and link the whole FAVOR+ extension, CUDA kernels included, with nvcc.
#
# Needs no GPU: it builds the same sources as llmppl/ops/_extension.py does on a CUDA
# machine (sources(with_cuda=True)) against a CUDA build of torch kept in .venv-cuda,
# and fails on any compile or link error. Idempotent: the venv and the ninja build
# directory (build/cuda-check) are reused, so a second run only rebuilds what changed.
#
#   bash scripts/cuda_check.sh
#
# Environment: CUDA_HOME (default: found from nvcc), TORCH_CUDA_ARCH_LIST (default
# "8.0;9.0"), LLMPPL_CUDA_TORCH (torch version for the venv, default 2.14.1).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
START=$(date +%s)
report() {
  local rc=$?
  local verdict=FAILED
  [ "$rc" -eq 0 ] && verdict=OK
  echo "cuda_check: $verdict (exit $rc) in $(( $(date +%s) - START ))s"
}
trap report EXIT

VENV="$ROOT/.venv-cuda"
TORCH_VERSION="${LLMPPL_CUDA_TORCH:-2.14.1}"
if ! "$VENV/bin/python" -c "import torch, ninja" >/dev/null 2>&1; then
  echo "cuda_check: creating $VENV with torch==$TORCH_VERSION (a CUDA build; this takes minutes)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "torch==$TORCH_VERSION" ninja
fi

# CUDA_HOME: nvcc may be a wrapper script that execs the real compiler, so follow
# symlinks and, failing that, read the real path out of the wrapper.
find_cuda_home() {
  local nvcc real cand
  nvcc="$(command -v nvcc)" || return 1
  real="$(readlink -f "$nvcc")"
  cand="$(dirname "$(dirname "$real")")"
  if [ -f "$cand/include/cuda.h" ]; then echo "$cand"; return 0; fi
  real="$(grep -oE '/[^[:space:]"'"'"']*/bin/nvcc' "$real" 2>/dev/null | head -n 1 || true)"
  if [ -n "$real" ]; then
    cand="$(dirname "$(dirname "$(readlink -f "$real")")")"
    if [ -f "$cand/include/cuda.h" ]; then echo "$cand"; return 0; fi
  fi
  for cand in /usr/local/cuda /usr/local/cuda-*; do
    if [ -f "$cand/include/cuda.h" ] && [ -x "$cand/bin/nvcc" ]; then echo "$cand"; return 0; fi
  done
  return 1
}
if [ -z "${CUDA_HOME:-}" ] || [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  CUDA_HOME="$(find_cuda_home)" || { echo "cuda_check: no CUDA toolkit found (is nvcc on PATH?)" >&2; exit 1; }
fi
export CUDA_HOME
export PATH="$CUDA_HOME/bin:$PATH"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
echo "cuda_check: CUDA_HOME=$CUDA_HOME ($("$CUDA_HOME/bin/nvcc" --version | tail -n 1)), arch $TORCH_CUDA_ARCH_LIST"

"$VENV/bin/python" - <<'PY'
import glob
import importlib.util
import os
import pathlib
import sys
import sysconfig

import torch
from torch.utils import cpp_extension

print(f"cuda_check: torch {torch.__version__} (CUDA {torch.version.cuda}), cuda available: {torch.cuda.is_available()}")
if torch.version.cuda is None:
    sys.exit("cuda_check: the torch in .venv-cuda is not a CUDA build")

# _extension.py only imports torch; load it by path so that llmppl's other
# dependencies (pyro, ...) need not be in this venv.
spec = importlib.util.spec_from_file_location("llmppl_ops_extension", "llmppl/ops/_extension.py")
extension = importlib.util.module_from_spec(spec)
spec.loader.exec_module(extension)
sources = extension.sources(with_cuda=True)
if not any(s.endswith(".cu") for s in sources):
    sys.exit("cuda_check: no .cu sources found under llmppl/ops/csrc/cuda")

# torch's CUDA headers include cusparse.h and friends from the pip nvidia packages.
site = sysconfig.get_paths()["purelib"]
includes = sorted({os.path.dirname(h) for h in glob.glob(os.path.join(site, "nvidia", "*", "include", "cusparse.h"))})

name = "llmppl_favor_cuda_check"
build_dir = pathlib.Path("build/cuda-check").resolve()
build_dir.mkdir(parents=True, exist_ok=True)
library = build_dir / f"{name}.so"
try:
    cpp_extension.load(
        name=name,
        sources=sources,
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3"],
        extra_include_paths=includes,
        with_cuda=True,
        is_python_module=False,
        build_directory=str(build_dir),
        verbose=True,
    )
    print("cuda_check: built and loaded", library)
except Exception as err:  # noqa: BLE001 - a build error fails; a load error without a GPU driver does not
    if "Error building extension" in str(err) or not library.exists():
        print(f"cuda_check: build failed: {err}", file=sys.stderr)
        sys.exit(1)
    newest = max(os.path.getmtime(s) for s in sources)
    if os.path.getmtime(library) < newest:
        sys.exit(f"cuda_check: {library} is older than the sources and loading failed: {err}")
    print(f"cuda_check: built {library}; loading it failed here ({type(err).__name__}: {err}), as expected without a GPU")
PY
