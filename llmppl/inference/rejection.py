r"""Rejection sampling: exact posterior samples from runs of the prior, in batches.

>>> import pyro
>>> from llmppl.distributions import LM
>>> from llmppl.models import ToyLM
>>> lm = ToyLM(alphabet="ab")
>>> def model():
...     x = pyro.sample("x", LM("", model=lm, max_tokens=2))
...     pyro.sample("y", LM(x, model=lm, max_tokens=1), obs="a")
...     return x
>>> pyro.set_rng_seed(0)
>>> post = Rejection(model, num_samples=4, max_attempts=1000, progress=False).run()
>>> post.num_particles, 0 < post.diagnostics["acceptance_rate"] <= 1
(4, True)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import torch

from .engine import Engine, Particle, check_count, check_program, posterior_from, progress_bar
from .posterior import InferenceError

__all__ = ["Rejection"]


class Rejection:
    r"""Exact samples: run the prior, accept a run with probability :math:`e^{\ell - B}`.

    :math:`\ell` is the run's log-likelihood (observed sites, ``pyro.factor``\ s and
    ``potential(value)`` of steered ``LM`` sites, which are sampled plainly here) and
    :math:`B` is ``log_likelihood_bound``, which must bound every :math:`\ell`: the
    default ``0`` holds for observed strings, factors ``<= 0`` and hard ``-inf``
    constraints. A run with :math:`\ell > B` raises ``ValueError`` (declare a larger
    bound). Runs are advanced in batches by the engine; runs with a ``-inf`` site stop
    there. ``log_evidence`` is :math:`B + \log(\text{acceptance rate})`.

    :param callable model: a Pyro program.
    :param int num_samples: accepted samples wanted.
    :param int max_attempts: most runs tried; fewer accepted raises :class:`InferenceError`.
    :param float log_likelihood_bound: :math:`B`.
    :param batch_size: runs per batch (default: adapted to the acceptance rate seen).
    :param bool progress: show a ``tqdm`` progress bar.

    >>> import pyro
    >>> positive = lambda: pyro.factor("f", torch.tensor(1.0))
    >>> Rejection(positive, num_samples=1, max_attempts=10, progress=False).run()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Rejection: a run has log-likelihood 1 > log_likelihood_bound=0; a positive factor ...
    """

    def __init__(
        self,
        model: Callable,
        *,
        num_samples: int,
        max_attempts: int,
        log_likelihood_bound: float = 0.0,
        batch_size: int | None = None,
        progress: bool = True,
    ):
        self.model = check_program(model, "model", "Rejection")
        self.num_samples = check_count(num_samples, "num_samples", "Rejection")
        self.max_attempts = check_count(max_attempts, "max_attempts", "Rejection")
        if isinstance(log_likelihood_bound, bool) or not isinstance(log_likelihood_bound, (int, float)):
            raise TypeError(
                f"Rejection: log_likelihood_bound: expected a finite float, got {type(log_likelihood_bound).__name__}"
            )
        if not math.isfinite(log_likelihood_bound):
            raise ValueError(f"Rejection: log_likelihood_bound: expected a finite float, got {log_likelihood_bound}")
        self.log_likelihood_bound = float(log_likelihood_bound)
        self.batch_size = None if batch_size is None else check_count(batch_size, "batch_size", "Rejection")
        self.progress = progress
        self.num_attempts = 0
        self.acceptance_rate = float("nan")

    def _next_batch(self, accepted: int, attempts: int) -> int:
        left = self.max_attempts - attempts
        if self.batch_size is not None:
            return min(self.batch_size, left)
        need = self.num_samples - accepted
        if attempts == 0:
            size = max(need, 32)
        else:
            rate = max(accepted, 1) / attempts
            size = math.ceil(1.2 * need / rate)
        return max(1, min(size, 4096, left))

    def run(self, *args, **kwargs):
        """Run the model with these arguments until ``num_samples`` runs are accepted."""
        bound = self.log_likelihood_bound
        accepted: list[Particle] = []
        attempts = 0
        deaths: Counter = Counter()
        bar = progress_bar(self.num_samples, "Rejection", self.progress)
        try:
            while len(accepted) < self.num_samples and attempts < self.max_attempts:
                size = self._next_batch(len(accepted), attempts)
                engine = Engine(self.model, args, kwargs, steer=False)
                runs = engine.run([Particle() for _ in range(size)], raise_if_all_dead=False)
                attempts += size
                lw = torch.tensor([p.log_weight for p in runs], dtype=torch.float64)
                worst = float(lw.max())
                if worst > bound + 1e-9:
                    raise ValueError(
                        f"Rejection: a run has log-likelihood {worst:.4g} > log_likelihood_bound={bound:g}; a positive "
                        "factor or potential needs a declared bound: Rejection(..., log_likelihood_bound=B) with "
                        "B >= every run's log-likelihood"
                    )
                deaths.update(p.dead_at for p in runs if p.dead)
                accept = torch.rand(size, dtype=torch.float64).log() < lw - bound
                new = [runs[i] for i in accept.nonzero().flatten().tolist()]
                bar.update(min(len(new), self.num_samples - len(accepted)))
                accepted.extend(new)
        finally:
            bar.close()
        self.num_attempts = attempts
        self.acceptance_rate = len(accepted) / attempts
        if len(accepted) < self.num_samples:
            site = deaths.most_common(1)[0][0] if deaths else None
            where = f"; most rejected runs died at site {site!r}" if site else ""
            raise InferenceError(
                f"Rejection: accepted {len(accepted)} of the {self.num_samples} samples asked for in "
                f"{attempts} attempts (max_attempts={self.max_attempts}){where}; raise max_attempts or use "
                "Importance/SMC",
                site=site,
            )
        log_evidence = bound + math.log(self.acceptance_rate)
        chosen = accepted[: self.num_samples]
        for p in chosen:
            p.log_weight = 0.0
        return posterior_from(
            chosen,
            algorithm="Rejection",
            log_evidence=log_evidence,
            diagnostics={"acceptance_rate": self.acceptance_rate, "attempts": attempts},
        )
