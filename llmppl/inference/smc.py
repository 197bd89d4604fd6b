"""Sequential Monte Carlo over a program's runs: resample when the weights degenerate.

>>> import pyro
>>> from llmppl.distributions import LM
>>> from llmppl.models import ToyLM
>>> lm = ToyLM(alphabet="ab")
>>> def model():
...     x = pyro.sample("x", LM("", model=lm, max_tokens=2))
...     pyro.factor("short", -2.0 * len(x))
...     return x
>>> pyro.set_rng_seed(0)
>>> SMC(model, num_particles=16, progress=False).run().num_particles
16
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .engine import Engine, Particle, check_count, check_program, posterior_from, progress_bar
from .resampling import get_resampler

__all__ = ["SMC"]


def _ess(lw: torch.Tensor) -> float:
    if not bool(torch.isfinite(lw).any()):
        return 0.0
    return float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)))


class SMC:
    r"""Sequential Monte Carlo: the engine's rounds with resampling at observations and factors.

    After each round's observed sites, factors and LM scores are counted, the particles
    are resampled when :math:`\mathrm{ESS} < \text{ess_threshold} \cdot N`; resampled
    particles all get the mean weight, so ``log_evidence`` (the log of the final mean
    weight) is the standard unbiased SMC estimate
    :math:`\sum_{\text{stages}} \log \frac1N \sum_i w_i`. ``LM`` sites with a
    ``potential`` are steered token by token with the same resampler and threshold.

    :param callable model: a Pyro program.
    :param int num_particles: number of particles.
    :param float ess_threshold: in ``[0, 1]``; ``0`` never resamples, ``1`` always.
    :param resampling: ``"multinomial"``, ``"stratified"``, ``"systematic"``, ``"residual"``
        or a callable ``(log_weights, num) -> ancestor indices``.
    :param bool progress: show a ``tqdm`` progress bar.

    >>> SMC(lambda: None, num_particles=4, resampling="bogus")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: resampling: expected one of 'multinomial', 'residual', 'stratified', 'systematic' or a ...
    """

    def __init__(
        self,
        model: Callable,
        *,
        num_particles: int,
        ess_threshold: float = 0.5,
        resampling="systematic",
        progress: bool = True,
    ):
        self.model = check_program(model, "model", "SMC")
        self.num_particles = check_count(num_particles, "num_particles", "SMC")
        if isinstance(ess_threshold, bool) or not isinstance(ess_threshold, (int, float)):
            raise TypeError(f"SMC: ess_threshold: expected a float in [0, 1], got {type(ess_threshold).__name__}")
        if not 0.0 <= ess_threshold <= 1.0:
            raise ValueError(f"SMC: ess_threshold: expected a float in [0, 1], got {ess_threshold}")
        self.ess_threshold = float(ess_threshold)
        get_resampler(resampling)
        self.resampling = resampling
        self.progress = progress
        self.engine: Engine | None = None
        self.num_resamples = 0

    def _maybe_resample(self, particles: list[Particle]) -> None:
        n = len(particles)
        lw = torch.tensor([p.log_weight for p in particles], dtype=torch.float64)
        if _ess(lw) >= self.ess_threshold * n or self.ess_threshold == 0.0:
            return
        ancestors = get_resampler(self.resampling)(lw, n).tolist()
        mean = float(torch.logsumexp(lw, 0)) - math.log(n)
        old = list(particles)
        for j, a in enumerate(ancestors):
            c = old[a].copy()
            c.log_weight = mean
            particles[j] = c
        self.num_resamples += 1

    def run(self, *args, **kwargs):
        """Run the model with these arguments; returns a :class:`Posterior`."""
        self.num_resamples = 0
        particles = [Particle() for _ in range(self.num_particles)]
        self.engine = engine = Engine(
            self.model, args, kwargs, resampling=self.resampling, ess_threshold=self.ess_threshold
        )
        bar = progress_bar(self.num_particles, "SMC", self.progress)
        try:
            engine.run(particles, on_round=self._maybe_resample, progress=bar)
        finally:
            bar.close()
        diagnostics = {
            "rounds": engine.round,
            "resamples": self.num_resamples,
            "token_resamples": engine.num_steering_resamples,
        }
        return posterior_from(particles, algorithm="SMC", diagnostics=diagnostics)
