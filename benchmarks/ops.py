"""Benchmark of the FAVOR+ ops: ours vs the reference methods, side by side in one run.

(a) ``causal_linear_attention`` on given features vs the pure-PyTorch way
    performer-pytorch computes it without its CUDA kernel (per chunk: einsum into
    ``[L, M, D]``, cumsum, contract; 128 chunks, its default);
(b) the whole ``favor_attention`` (features included) vs
    ``scaled_dot_product_attention(is_causal=True)``;
(c) the recurrent decoding step at context position 8192 vs 128.

B=1, H=8, head dim 64, 256 features, float32. Times are medians of repeats. Each
method runs in a fresh subprocess per length, for its timing and again for its peak
memory (CPU: the rise of the resident-set
high-water mark over the inputs; CUDA: ``max_memory_allocated``), so no method pays for
another's memory churn.

    python benchmarks/ops.py                      # the full table (L = 512 … 16k)
    python benchmarks/ops.py --lengths 512 1024   # a quick look
    python benchmarks/ops.py --device cuda        # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from llmppl import ops
from llmppl.ops import _reference

B, H, DH, M = 1, 8, 64, 256
GOALS = {
    "a_speed_4096": 10.0,  # ours at least 10x faster than the performer-pytorch way at L=4096
    "a_memory_4096": 1 / 8,  # with at most 1/8 of its peak memory
    "b_speed_4096": 1.0,  # favor_attention at least as fast as SDPA at 4096
    "b_speed_8192": 1.5,  # and 1.5x faster at 8192
    "c_step_ratio": 1.2,  # decode step at 8192 costs at most 1.2x the step at 128
}


def performer_pytorch_causal(q, k, v, chunks: int = 128, eps: float = 1e-6):
    """The non-CUDA causal linear attention of performer-pytorch, re-implemented.

    Splits the sequence into ``chunks`` pieces; in each, materialises the outer products
    ``k_s v_sᵀ`` (``[.., n, M, D]``), takes their running sum and contracts it with
    ``q``. No stabiliser: it takes features as given.
    """
    last_k = 0
    last_ctx = 0
    outs = []
    for qc, kc, vc in zip(*(t.chunk(chunks, dim=-2) for t in (q, k, v)), strict=True):
        k_cum = last_k + kc.cumsum(dim=-2)
        d_inv = 1.0 / torch.einsum("...nm,...nm->...n", qc, k_cum + eps)
        ctx = torch.einsum("...nm,...nd->...nmd", kc, vc)
        ctx_cum = last_ctx + ctx.cumsum(dim=-3)
        outs.append(torch.einsum("...nmd,...nm,...n->...nd", ctx_cum, qc, d_inv))
        last_k, last_ctx = k_cum[..., -1:, :], ctx_cum[..., -1:, :, :]
    return torch.cat(outs, dim=-2)


def make_inputs(L: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, L, DH, generator=g).to(device) for _ in range(3))
    proj = ops.orthogonal_random_features(M, DH, generator=g).to(device)
    q_feat = ops.favor_features(q, proj, is_query=True)
    k_feat, k_log_scale = ops.favor_features(k, proj, is_query=False)
    k_feat = k_feat * torch.exp(k_log_scale - k_log_scale.amax()).unsqueeze(-1)  # plain features for (a)
    return dict(q=q, k=k, v=v, proj=proj, q_feat=q_feat, k_feat=k_feat)


# timed only (no goal): our own pure-PyTorch chunked form, masked [C, C] products inside
# chunks and a loop over chunks between them. On a GPU the sequential-scan kernel lost to
# SDPA at 4096 (BENCHMARKS.md); this row says whether the chunked form would do better there.
EXTRA = {
    "torch_chunked": lambda x: _reference.causal_linear_attention(x["q_feat"], x["k_feat"], x["v"]),
}

METHODS = {
    "ours_causal": lambda x: ops.causal_linear_attention(x["q_feat"], x["k_feat"], x["v"]),
    "performer_pytorch": lambda x: performer_pytorch_causal(x["q_feat"], x["k_feat"], x["v"]),
    "ours_favor": lambda x: ops.favor_attention(x["q"], x["k"], x["v"], x["proj"], causal=True),
    "sdpa": lambda x: torch.nn.functional.scaled_dot_product_attention(x["q"], x["k"], x["v"], is_causal=True),
}


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_once(fn, x, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn(x)
    sync(device)
    return time.perf_counter() - t0


def read_status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def peak_memory_child(method: str, L: int, device: str) -> int:
    """Run in a subprocess: bytes of peak memory one call adds over its inputs."""
    x = make_inputs(L, device)
    with torch.no_grad():
        if device == "cuda":
            METHODS[method](make_inputs(64, device))  # load kernels outside the measurement
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            METHODS[method](x)
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - base
        METHODS[method](make_inputs(64, device))
        base = read_status("VmRSS:")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark to the current RSS
        METHODS[method](x)
        return max(read_status("VmHWM:") - base, 0)


def time_child(method: str, L: int, repeats: int, device: str) -> list[float]:
    """Run in a subprocess: seconds of ``repeats`` calls after one warm-up call."""
    x = make_inputs(L, device)
    fn = {**METHODS, **EXTRA}[method]
    with torch.no_grad():
        fn(x)
        return [time_once(fn, x, device) for _ in range(repeats)]


def child(args: list[str], device: str, env: dict | None = None):
    out = subprocess.run(
        [sys.executable, __file__, *args, "--device", device],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_memory(method: str, L: int, device: str) -> int:
    # A fixed mmap threshold makes glibc return every large block to the OS when freed,
    # so the resident set follows live memory and its high-water mark is the peak.
    return child(["--memory-child", method, str(L)], device, env={"MALLOC_MMAP_THRESHOLD_": "65536"})


def step_costs(positions, device: str, repeats: int) -> dict:
    """Median seconds of one recurrent decoding step after prefixes of each length.

    The positions are timed alternately, so drift in the machine's speed hits all alike.
    """
    states, q_ts, proj = {}, {}, None
    for pos in positions:
        x = make_inputs(pos, device)
        kf, ls = ops.favor_features(x["k"], x["proj"], is_query=False)
        states[pos] = ops.FavorState.from_sequence(kf, ls, x["v"])
        q_ts[pos], proj = x["q"][:, :, -1], x["proj"]
    times = {pos: [] for pos in positions}
    with torch.no_grad():
        for _ in range(repeats):
            for pos in positions:
                sync(device)
                t0 = time.perf_counter()
                ops.favor_attention_step(q_ts[pos], q_ts[pos], q_ts[pos], states[pos], projection=proj)
                sync(device)
                times[pos].append(time.perf_counter() - t0)
    return {pos: statistics.median(v) for pos, v in times.items()}


def fmt_ms(s: float) -> str:
    return f"{s * 1e3:9.1f}"


def fmt_mb(b: float) -> str:
    return f"{b / 2**20:9.1f}"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
    p.add_argument("--repeats", type=int, default=5, help="timing repeats per cell (median)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--memory-child", nargs=2, metavar=("METHOD", "L"), help=argparse.SUPPRESS)
    p.add_argument("--time-child", nargs=3, metavar=("METHOD", "L", "REPEATS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        print(json.dumps(peak_memory_child(args.memory_child[0], int(args.memory_child[1]), args.device)))
        return {}
    if args.time_child:
        method, L, reps = args.time_child
        print(json.dumps(time_child(method, int(L), int(reps), args.device)))
        return {}
    device = args.device
    if device == "cuda":
        print(f"device: {torch.cuda.get_device_name()}")
    else:
        print(f"device: CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"extension built: {ops.extension_available()}")
    print(f"B={B} H={H} head_dim={DH} features={M} float32; times are medians of {args.repeats} repeats\n")
    rows = []
    header = (
        f"{'L':>6} | {'(a) ours ms':>11} {'pp-torch ms':>11} {'speed-up':>8}"
        f" {'ours MB':>9} {'pp MB':>9} {'mem ratio':>9}"
        f" | {'(b) favor ms':>12} {'sdpa ms':>9} {'speed-up':>8} {'favor MB':>9} {'sdpa MB':>9}"
    )
    print(header)
    print("-" * len(header))
    for L in args.lengths:
        t = {}
        for name in METHODS:
            # each method in a fresh process: the performer-pytorch way releases
            # gigabytes, and whatever runs after it in the same process pays for that
            reps = args.repeats if (L <= 4096 or name != "performer_pytorch") else 2
            t[name] = statistics.median(child(["--time-child", name, str(L), str(reps)], device))
        for name in EXTRA:
            t[name] = statistics.median(child(["--time-child", name, str(L), str(args.repeats)], device))
        mem = {name: float("nan") for name in METHODS}
        if not args.no_memory:
            mem = {name: peak_memory(name, L, device) for name in METHODS}
        row = dict(L=L, time_s=t, peak_bytes=mem)
        rows.append(row)
        print(
            f"{L:>6} | {fmt_ms(t['ours_causal']):>11} {fmt_ms(t['performer_pytorch']):>11}"
            f" {t['performer_pytorch'] / t['ours_causal']:>7.1f}x"
            f" {fmt_mb(mem['ours_causal'])} {fmt_mb(mem['performer_pytorch'])}"
            f" {mem['ours_causal'] / mem['performer_pytorch']:>9.3f}"
            f" | {fmt_ms(t['ours_favor']):>12} {fmt_ms(t['sdpa']):>9} {t['sdpa'] / t['ours_favor']:>7.2f}x"
            f" {fmt_mb(mem['ours_favor'])} {fmt_mb(mem['sdpa'])}",
            flush=True,
        )
    chunk = _reference.DEFAULT_CHUNK
    print(f"\n(d) the causal op as our pure-PyTorch chunked form (chunk {chunk}), beside (a)'s kernel:")
    for r in rows:
        t = r["time_s"]
        print(
            f"  L={r['L']}: chunked {t['torch_chunked'] * 1e3:.1f} ms, kernel {t['ours_causal'] * 1e3:.1f} ms "
            f"(kernel {t['torch_chunked'] / t['ours_causal']:.2f}x as fast)"
        )
    step = step_costs((128, 8192), device, repeats=300)
    print(
        f"\n(c) recurrent step (N=1): position 128: {step[128] * 1e6:.0f} us, position 8192: "
        f"{step[8192] * 1e6:.0f} us, ratio {step[8192] / step[128]:.2f}"
    )
    by_len = {r["L"]: r for r in rows}
    checks = []
    if 4096 in by_len:
        r = by_len[4096]
        checks.append(
            (
                "(a) >= 10x faster at 4096",
                r["time_s"]["performer_pytorch"] / r["time_s"]["ours_causal"],
                GOALS["a_speed_4096"],
                ">=",
            )
        )
        if not args.no_memory:
            checks.append(
                (
                    "(a) <= 1/8 peak memory at 4096",
                    r["peak_bytes"]["ours_causal"] / r["peak_bytes"]["performer_pytorch"],
                    GOALS["a_memory_4096"],
                    "<=",
                )
            )
        checks.append(
            ("(b) >= SDPA speed at 4096", r["time_s"]["sdpa"] / r["time_s"]["ours_favor"], GOALS["b_speed_4096"], ">=")
        )
    if 8192 in by_len:
        r = by_len[8192]
        checks.append(
            ("(b) >= 1.5x SDPA at 8192", r["time_s"]["sdpa"] / r["time_s"]["ours_favor"], GOALS["b_speed_8192"], ">=")
        )
    checks.append(("(c) step 8192/128 <= 1.2", step[8192] / step[128], GOALS["c_step_ratio"], "<="))
    print("\ngoals:")
    for name, value, goal, op in checks:
        met = value >= goal if op == ">=" else value <= goal
        print(f"  {name:<34} measured {value:8.3f}  {'met' if met else 'NOT met'}")
    result = dict(device=device, rows=rows, step_s=step, checks=[c[:2] for c in checks])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
