"""Which C++ errors crash the process on this machine (scripts/gpu_check.sh runs it).

On the lent H200 (torch 2.11.0+cu130, gcc 13.3) a wrong-shaped ``k_log_scale`` passed
straight to ``torch.ops.llmppl.causal_linear_attention`` crashed Python with a
segmentation fault instead of raising ``RuntimeError``, for CPU tensors as well as CUDA
ones; here (torch 2.13 / 2.14.1, gcc 12.2) the same call raises. Each case below runs
in a child process, so one crash does not hide the others, and the report says which
kinds of error survive: torch's own, ours with a short message, ours with a message
that prints sizes, on the CPU and on the GPU.

    python scripts/gpu_throw_probe.py
"""

from __future__ import annotations

import subprocess
import sys

SETUP = """
import torch
from llmppl.ops import _extension
assert _extension.load(), "extension not built"
dev = {device!r}
q = torch.rand(1, 2, 9, 8, device=dev); v = torch.randn(1, 2, 9, 4, device=dev); ls = torch.zeros(1, 2, 9, device=dev)
"""

CASES = {
    "torch's own error (control)": "torch.mm(q[0, 0], q[0, 0])",
    "ours, chunk 0 (short message)": "torch.ops.llmppl.causal_linear_attention(q, q, v, ls, 0)",
    "ours, wrong log-scale shape (message with sizes)": (
        "torch.ops.llmppl.causal_linear_attention(q, q, v, ls[..., :-1], 64)"
    ),
    "ours, mixed dtypes": "torch.ops.llmppl.causal_linear_attention(q, q.double(), v, ls, 64)",
}


def main() -> int:
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    crashed = 0
    for device in devices:
        for name, call in CASES.items():
            code = SETUP.format(device=device) + f"\ntry:\n    {call}\nexcept RuntimeError as e:\n    print('raised')\n"
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
            if proc.returncode == 0 and "raised" in proc.stdout:
                verdict = "raises RuntimeError"
            elif proc.returncode < 0:
                verdict, crashed = f"CRASHED (signal {-proc.returncode})", crashed + 1
            else:
                verdict = f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
            print(f"{device:4} | {name:50} | {verdict}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
