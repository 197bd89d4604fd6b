"""The replay-and-stop messenger: one particle's program, re-executed up to its next LM call.

Protocol of one round for one particle (see :mod:`llmppl.inference.engine`):

1. every site whose value is known is replayed (``msg["value"]``, ``msg["done"] = True``);
2. other non-LM latent sites sample as usual and their values are recorded (they are
   replayed, never redrawn, in later rounds);
3. the first ``LM`` site that needs work the engine batches across particles (a latent
   site without a value, an observed or guide-provided site without a score) raises
   :class:`Stop`, which unwinds the program.

Every site reached is recorded (:class:`SiteRecord`), and the sequence of sites (with
the prompts of LM sites) is checked against the previous round's: a program that does
not reach the same sites in the same order under replay uses randomness outside
``pyro.sample`` and cannot be replayed.

>>> import pyro, pyro.distributions as dist
>>> from llmppl.distributions import LM
>>> from llmppl.models import ToyLM
>>> def model():
...     z = pyro.sample("z", dist.Bernoulli(0.5))
...     return pyro.sample("s", LM("ab", model=ToyLM(), max_tokens=2))
>>> m = ReplayStopMessenger({}, {})
>>> try:
...     with m:
...         model()
... except Stop as stop:
...     print(stop.name, stop.kind, [s.name for s in m.sites])
s sample ['z']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyro.poutine.messenger import Messenger

from llmppl.distributions import LM, IIDStrings

__all__ = ["ReplayError", "ReplayStopMessenger", "SiteRecord", "Stop"]


class ReplayError(RuntimeError):
    """The program reached different sites (or LM prompts) when re-executed with the same values.

    >>> isinstance(ReplayError("x"), RuntimeError)
    True
    """


class Stop(BaseException):
    """Raised at the first LM site the engine must handle (``kind``: ``"sample"`` or ``"score"``).

    A ``BaseException`` so that a user's ``except Exception`` cannot swallow it.

    >>> Stop("s", "score", None, "yes").value
    'yes'
    """

    def __init__(self, name: str, kind: str, fn: Any, value: Any = None, *, msg: dict | None = None, shape=None):
        super().__init__(name)
        self.name = name
        self.kind = kind
        self.fn = fn  # the LM (of every string, inside a vectorised plate)
        self.value = value
        self.shape = shape  # None, or the plate's batch shape: the value is a list of shape.numel() strings
        self.is_observed = bool(msg["is_observed"]) if msg is not None else kind == "score"
        self.scale = msg["scale"] if msg is not None else 1.0
        self.mask = msg["mask"] if msg is not None else None


@dataclass
class SiteRecord:
    """One sample site reached by a run (what a Pyro trace node holds, and no more).

    >>> SiteRecord("x", None, "ab", True, 1.0, None, (), False).is_observed
    True
    """

    name: str
    fn: Any
    value: Any
    is_observed: bool
    scale: Any
    mask: Any
    cond_indep_stack: tuple
    is_lm: bool


def lm_of(fn) -> LM | None:
    """The ``LM`` of an LM site: the distribution itself, or the one a vectorised
    ``pyro.plate`` expanded into :class:`~llmppl.distributions.strings.IIDStrings`.

    >>> from llmppl.models import ToyLM
    >>> d = LM("a", model=ToyLM(alphabet="ab"))
    >>> lm_of(d) is d, lm_of(d.expand((3,))) is d, lm_of(None)
    (True, True, None)
    """
    if isinstance(fn, LM):
        return fn
    if isinstance(fn, IIDStrings) and isinstance(fn.base_dist, LM):
        return fn.base_dist
    return None


def _trail_entry(name: str, fn) -> tuple:
    lm = lm_of(fn)
    return (name, lm.prompt) if lm is not None else (name, None)


class ReplayStopMessenger(Messenger):
    """Replay ``values``, record new latent values, stop at the next LM site needing work.

    :param dict values: site name -> value; new non-LM latent values are added to it.
    :param dict scores: site name -> log-probability of the LM value (cached batch scores).
    :param provided: latent site names whose values came from outside (a guide): their
        LM sites stop once to be scored.
    :param tuple trail: the previous round's ``trail`` (checked, see the module docstring).

    >>> ReplayStopMessenger({"x": "a"}, {}).values
    {'x': 'a'}
    """

    def __init__(self, values: dict, scores: dict, *, provided=frozenset(), trail: tuple = ()):
        super().__init__()
        self.values = values
        self.scores = scores
        self.provided = provided
        self.expected = trail
        self.trail: list[tuple] = []
        self.sites: list[SiteRecord] = []
        self.last_site: str | None = None
        self._names: set[str] = set()

    def _pyro_sample(self, msg) -> None:
        name, fn = msg["name"], msg["fn"]
        self.last_site = name
        lm = lm_of(fn)
        shape = fn.batch_shape if lm is not None and lm is not fn else None  # inside a vectorised plate
        if shape is not None and lm.potential is not None:
            raise NotImplementedError(
                f"site {name!r}: an LM with a potential inside a vectorised pyro.plate ({fn.n} strings) is not "
                "supported (token-level steering runs one string per site); use a Python loop with one site "
                "per string (`for i in pyro.plate(...)` or `range`)"
            )
        entry = _trail_entry(name, fn)
        k = len(self.trail)
        if k < len(self.expected) and self.expected[k] != entry:
            raise ReplayError(
                f"site {name!r}: the model diverged under replay: expected site {self.expected[k][0]!r}"
                + (" with the same prompt" if self.expected[k][0] == name else "")
                + " at this point, as in the previous round. The model must be deterministic given its "
                "pyro.sample values: randomness outside pyro.sample (Python's random, numpy.random, time) "
                "cannot be replayed, nor can a site hidden by poutine.block; draw it with an unblocked pyro.sample"
            )
        self.trail.append(entry)
        if msg["is_observed"]:
            if lm is not None and name not in self.scores:
                raise Stop(name, "score", lm, msg["value"], msg=msg, shape=shape)
            return
        if name in self.values:
            msg["value"] = self.values[name]
            msg["done"] = True
            if lm is not None and name in self.provided and name not in self.scores:
                raise Stop(name, "score", lm, msg["value"], msg=msg, shape=shape)
            return
        if lm is not None:
            raise Stop(name, "sample", lm, msg=msg, shape=shape)

    def _pyro_post_sample(self, msg) -> None:
        name = msg["name"]
        if name in self._names:
            raise ValueError(f"site {name!r}: expected unique sample site names in one run, got {name!r} twice")
        self._names.add(name)
        is_lm = lm_of(msg["fn"]) is not None
        if not msg["is_observed"] and name not in self.values:
            self.values[name] = msg["value"]
        self.sites.append(
            SiteRecord(
                name,
                msg["fn"],
                msg["value"],
                bool(msg["is_observed"]),
                msg["scale"],
                msg["mask"],
                tuple(msg["cond_indep_stack"]),
                is_lm,
            )
        )
