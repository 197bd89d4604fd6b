"""Which C++ errors crash the process on this machine (scripts/gpu_check.sh runs it).

On the lent H200 (torch 2.11.0+cu130, gcc 13.3) a wrong-shaped ``k_log_scale`` passed
straight to ``torch.ops.llmppl.causal_linear_attention`` crashed Python with a
segmentation fault instead of raising ``RuntimeError``, for CPU tensors as well as CUDA
ones; here (torch 2.13 / 2.14.1, gcc 12.2) the same call raises. Each case below runs
in a child process, so one crash does not hide the others, and the report says which
kinds of error survive: torch's own, ours with a short message, ours with a message
that prints sizes, and a minimal extension's (built on the spot), on the CPU and the GPU.
Here, besides torch 2.13 and 2.14.1, torch 2.11.0+cu130 on Python 3.11 and 3.12 with the
CUDA kernels compiled in (gcc 12.2, nvcc 13.0) raised in every case: what is left to
suspect on the H200 is its gcc 13.3 build or the driver being there.

    python scripts/gpu_throw_probe.py
"""

from __future__ import annotations

import subprocess
import sys

SETUP = """
import torch
from llmppl.ops import _extension
assert _extension.load(), "extension not built"
q = torch.rand(1, 2, 9, 8, device=dev); v = torch.randn(1, 2, 9, 4, device=dev); ls = torch.zeros(1, 2, 9, device=dev)
"""

# A minimal extension, built on the spot, whose op only raises: tells "any extension's
# error crashes here" from "ours does".
MINIMAL_SOURCE = r"""
#include <torch/library.h>
at::Tensor probe_raise(const at::Tensor& x) { TORCH_CHECK(false, "probe: expected nothing, got ", x.sizes()); }
TORCH_LIBRARY(llmppl_probe, m) { m.def("raise_(Tensor x) -> Tensor"); }
TORCH_LIBRARY_IMPL(llmppl_probe, CompositeExplicitAutograd, m) { m.impl("raise_", &probe_raise); }
"""
MINIMAL = f"""
import tempfile, torch
from torch.utils.cpp_extension import load_inline
load_inline("llmppl_probe", cpp_sources=[{MINIMAL_SOURCE!r}], is_python_module=False,
            build_directory=tempfile.mkdtemp(prefix="llmppl-probe-"))
q = torch.rand(2, 3, device=dev)
"""

# name -> (setup, the call that should raise RuntimeError)
CASES = {
    "torch's own error (control)": (SETUP, "torch.mm(q[0, 0], q[0, 0])"),
    "ours, chunk 0 (short message)": (SETUP, "torch.ops.llmppl.causal_linear_attention(q, q, v, ls, 0)"),
    "ours, wrong log-scale shape (message with sizes)": (
        SETUP,
        "torch.ops.llmppl.causal_linear_attention(q, q, v, ls[..., :-1], 64)",
    ),
    "ours, mixed dtypes": (SETUP, "torch.ops.llmppl.causal_linear_attention(q, q.double(), v, ls, 64)"),
    "a minimal extension built here (no llmppl)": (MINIMAL, "torch.ops.llmppl_probe.raise_(q)"),
}


def main() -> int:
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    crashed = 0
    for device in devices:
        for name, (setup, call) in CASES.items():
            catch = "except RuntimeError as e:\n    print('raised:', str(e).splitlines()[0][:60])\n"
            code = f"dev = {device!r}\n{setup}\ntry:\n    {call}\n{catch}"
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
            if proc.returncode == 0 and "raised" in proc.stdout:
                verdict = "raises RuntimeError: " + proc.stdout.split("raised:", 1)[1].strip()
            elif proc.returncode < 0:
                verdict, crashed = f"CRASHED (signal {-proc.returncode})", crashed + 1
            else:
                verdict = f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
            print(f"{device:4} | {name:50} | {verdict}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
