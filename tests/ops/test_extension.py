"""Building the extension, and the fallback when it cannot be built."""

import os
import subprocess
import sys
import textwrap

from llmppl.ops import _extension

SCRIPT = textwrap.dedent(
    """
    import warnings, torch
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        from llmppl import ops
        from llmppl.ops import _reference
        g = torch.Generator().manual_seed(0)
        w = ops.orthogonal_random_features(16, 8, generator=g)
        q, k, v = (torch.randn(1, 2, 9, 8, generator=g) for _ in range(3))
        out = ops.favor_attention(q, k, v, w, causal=True)
        ops.favor_attention(q, k, v, w, causal=True)
    qf, _ = _reference.favor_features(q, w)
    kf, ls = _reference.favor_features(k, w)
    expected = _reference.causal_linear_attention(qf, kf, v, ls)
    assert torch.allclose(out, expected, atol=1e-6)
    print(ops.extension_available(), sum("could not build" in str(w.message) for w in caught))
    """
)


def run(env_extra, tmp_path):
    env = {**os.environ, "LLMPPL_EXTENSIONS_DIR": str(tmp_path / "ext"), **env_extra}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_broken_compiler_falls_back_with_one_warning(tmp_path):
    available, warnings = run({"CXX": "/bin/false", "CC": "/bin/false"}, tmp_path)
    assert available == "False"
    assert warnings == "1"


def test_opt_out_uses_the_reference_silently(tmp_path):
    assert run({"LLMPPL_NO_EXTENSION": "1"}, tmp_path) == ["False", "0"]


def test_sources_lay_out_like_torchvision():
    cpu = _extension.sources(with_cuda=False)
    assert cpu[0].endswith("csrc/favor.cpp")
    assert all("/cpu/" in s for s in cpu[1:])
    assert all(s.endswith(".cu") for s in _extension.sources(with_cuda=True)[len(cpu) :])


def test_the_compiled_ops_raise_errors_for_bad_input():
    # The raw ops, past the Python checks: the C++ checks raise RuntimeError. On the first
    # GPU run the same call with CUDA tensors crashed the process (tests/ops/test_cuda.py);
    # this is the CPU half of that comparison.
    import pytest
    import torch

    from llmppl import ops

    if not ops.extension_available():
        pytest.skip("C++ extension not built")
    q, k, v = torch.rand(1, 2, 9, 8), torch.rand(1, 2, 9, 8), torch.randn(1, 2, 9, 4)
    ls = torch.zeros(1, 2, 9)
    with pytest.raises(
        RuntimeError, match=r"expected k_log_scale of shape \[\.\.\., L\] = \[1, 2, 9\], got \[1, 2, 8\]"
    ):
        torch.ops.llmppl.causal_linear_attention(q, k, v, ls[..., :-1], 64)
    with pytest.raises(RuntimeError, match="expected chunk >= 1, got 0"):
        torch.ops.llmppl.causal_linear_attention(q, k, v, ls, 0)
    with pytest.raises(RuntimeError, match="expected q_feat, k_feat and v of one floating dtype"):
        torch.ops.llmppl.causal_linear_attention(q, k.double(), v, ls, 64)
