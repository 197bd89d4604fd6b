"""Importance sampling over a program's runs, all particles advanced together by the engine.

>>> import pyro
>>> from llmppl.distributions import LM
>>> from llmppl.models import ToyLM
>>> lm = ToyLM(alphabet="ab")
>>> def model():
...     x = pyro.sample("x", LM("", model=lm, max_tokens=2))
...     pyro.sample("y", LM(x, model=lm, max_tokens=1), obs="a")
...     return x
>>> pyro.set_rng_seed(0)
>>> post = Importance(model, num_samples=16, progress=False).run()
>>> post.num_particles, post.log_evidence < 0
(16, True)
"""

from __future__ import annotations

from collections.abc import Callable

from .engine import Engine, Particle, check_count, check_program, posterior_from, progress_bar

__all__ = ["Importance"]


class Importance:
    r"""Likelihood weighting, or importance sampling with a guide.

    Without a guide every particle runs the model forward (LM sites sampled from the
    model, in one batch per round) and is weighted by its observed sites and factors.
    With a guide (a program with the same latent site names) the guide's runs are
    advanced first; its LM samples carry their exact ``log q``; then the model is run
    with the guide's values, its LM sites at those values scored in one batch
    (``log p``), and the weight is :math:`p(x, y) / q(x)`. ``LM`` sites with a
    ``potential`` in the model are steered token by token (see
    :mod:`llmppl.inference.steering`).

    :param callable model: a Pyro program.
    :param callable guide: ``None`` or a Pyro program proposing the model's latent sites.
    :param int num_samples: number of particles.
    :param bool progress: show a ``tqdm`` progress bar.

    >>> import pyro
    >>> from llmppl.distributions import LM
    >>> from llmppl.models import ToyLM
    >>> lm = ToyLM(alphabet="ab")
    >>> model = lambda: pyro.sample("x", LM("", model=lm, max_tokens=2))
    >>> guide = lambda: pyro.sample("x", LM("b", model=lm, max_tokens=2))
    >>> post = Importance(model, guide, num_samples=8, progress=False).run()
    >>> post.ess <= 8
    True
    """

    def __init__(self, model: Callable, guide: Callable | None = None, *, num_samples: int, progress: bool = True):
        self.model = check_program(model, "model", "Importance")
        self.guide = None if guide is None else check_program(guide, "guide", "Importance")
        self.num_samples = check_count(num_samples, "num_samples", "Importance")
        self.progress = progress
        self.engine: Engine | None = None

    def run(self, *args, **kwargs):
        """Run the model (and guide) with these arguments; returns a :class:`Posterior`."""
        n = self.num_samples
        particles = [Particle() for _ in range(n)]
        diagnostics = {}
        if self.guide is not None:
            guide_engine = Engine(self.guide, args, kwargs, mode="guide")
            bar = progress_bar(n, "guide", self.progress)
            try:
                guide_runs = guide_engine.run([Particle() for _ in range(n)], progress=bar)
            finally:
                bar.close()
            particles = [
                Particle(values=dict(g.values), provided=frozenset(g.values), log_weight=g.log_weight)
                for g in guide_runs
            ]
        self.engine = engine = Engine(self.model, args, kwargs)
        bar = progress_bar(n, "Importance", self.progress)
        try:
            engine.run(particles, progress=bar)
        finally:
            bar.close()
        diagnostics["rounds"] = engine.round
        return posterior_from(particles, algorithm="Importance", diagnostics=diagnostics)
