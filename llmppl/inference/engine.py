"""The batched replay engine: advance every particle of a Pyro program in rounds.

Pyro runs a program one execution at a time under a global handler stack, so particles
cannot run in threads. Instead each **round**:

1. re-executes every live particle's program under
   :class:`~llmppl.inference.messenger.ReplayStopMessenger`: known values are replayed,
   other non-LM latent sites sample and are recorded, and the run stops at the first
   ``LM`` site that needs the model; sites reached for the first time add their
   log-probabilities to the particle's log-weight (observed sites, ``pyro.factor``,
   guide-provided values; with ``scale`` and ``mask`` applied as Pyro does);
2. scores every stopped observed (or guide-provided) LM site, grouped across **all**
   particles by (model, decoding settings): one ``model.score`` call per group;
3. lets the algorithm look at the weights (SMC resamples here);
4. samples every stopped latent LM site, one ``model.sample`` call per group (different
   prompts in one batch); sites with a ``potential`` are extended token by token
   instead (:mod:`llmppl.inference.steering`).

A particle is its replay values, its cached LM scores and its log-weight, so resampling
copies a few dictionaries. Randomness comes only from torch's RNG (``pyro.set_rng_seed``
reproduces a run): ``model.sample`` gets a ``torch.Generator`` seeded from it.

A program must be deterministic given its ``pyro.sample`` values: one that draws with
Python's ``random``, ``numpy.random`` or the clock outside ``pyro.sample`` cannot be
replayed. The engine checks that every re-execution reaches the same sites (and LM
prompts) in the same order as the previous round and raises
:class:`~llmppl.inference.messenger.ReplayError` when it does not.

>>> import pyro
>>> from llmppl.distributions import LM
>>> from llmppl.models import ToyLM
>>> lm = ToyLM(alphabet="ab")
>>> def model():
...     x = pyro.sample("x", LM("", model=lm, max_tokens=3))
...     pyro.sample("y", LM(x, model=lm, max_tokens=2), obs="a")
...     return x
>>> engine = Engine(model)
>>> particles = engine.run([Particle() for _ in range(4)])
>>> all(p.done for p in particles), engine.num_sample_calls, engine.num_score_calls
(True, 1, 1)
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .messenger import ReplayError, ReplayStopMessenger, SiteRecord, Stop
from .posterior import InferenceError

__all__ = ["Engine", "Particle"]

_NEG_INF = float("-inf")


@dataclass
class Particle:
    """One execution of the program, advanced round by round.

    :param dict values: site name -> value of every latent site so far (replayed).
    :param dict scores: LM site name -> log-probability of its value (batch scores).
    :param dict site_logp: site name -> what the site added to ``log_weight`` (also marks
        the sites already counted).
    :param float log_weight: ``-inf`` when the particle has zero weight.
    :param frozenset provided: latent sites whose values came from a guide (scored by the model).

    >>> p = Particle(values={"x": "ab"})
    >>> q = p.copy(); q.values["y"] = "a"
    >>> sorted(p.values), p.dead
    (['x'], False)
    """

    values: dict = field(default_factory=dict)
    scores: dict = field(default_factory=dict)
    site_logp: dict = field(default_factory=dict)
    log_weight: float = 0.0
    provided: frozenset = frozenset()
    done: bool = False
    ret: Any = None
    trail: tuple = ()
    sites: list = field(default_factory=list)
    stop: Stop | None = None
    dead_at: str | None = None
    dead_round: int = -1

    @property
    def dead(self) -> bool:
        """Zero weight: never advanced again."""
        return self.log_weight == _NEG_INF

    def copy(self) -> Particle:
        """A copy that can be advanced independently (dictionaries copied, values shared)."""
        return Particle(
            dict(self.values),
            dict(self.scores),
            dict(self.site_logp),
            self.log_weight,
            self.provided,
            self.done,
            self.ret,
            self.trail,
            self.sites,
            self.stop,
            self.dead_at,
            self.dead_round,
        )

    def all_values(self) -> dict:
        """Latent and observed values of the last run, in site order."""
        out = {s.name: s.value for s in self.sites}
        for k, v in self.values.items():
            out.setdefault(k, v)
        return out


def _add_note(err: BaseException, note: str) -> None:
    if hasattr(err, "add_note"):
        err.add_note(note)


def _as_log_prob(value, name: str, what: str) -> torch.Tensor:
    lp = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    if not (lp.is_floating_point() or lp.dtype in (torch.int64, torch.int32, torch.bool)):
        raise TypeError(f"site {name!r}: {what}: expected a real number, got {lp.dtype}")
    return lp.detach().to(torch.float64)


def _strings(stop: Stop) -> int:
    """How many strings a stopped LM site stands for (a vectorised plate's size, else 1)."""
    return 1 if stop.shape is None else stop.shape.numel()


def _unflatten(stops: list[Stop], flat: list, *, log_probs: bool) -> list:
    """Per stop, its item of ``flat`` (one per string, in order): the item itself for a plain
    site; for a site inside a vectorised plate, the list of texts, or with ``log_probs`` the
    tensor of the plate's shape."""
    out, k = [], 0
    for s in stops:
        n = _strings(s)
        part = flat[k : k + n]
        k += n
        if s.shape is None:
            out.append(part[0])
        elif log_probs:
            out.append(torch.tensor(part, dtype=torch.float64).reshape(s.shape))
        else:
            out.append(list(part))
    return out


def _check_lm_value(stop: Stop) -> None:
    """An observed (or guide-provided) LM value: a str, or inside a vectorised plate a list of them."""
    value = stop.value
    if stop.shape is None:
        if not isinstance(value, str):
            raise TypeError(
                f"site {stop.name!r}: expected a str value for an LM site, got {type(value).__name__} ({value!r})"
            )
        return
    n = _strings(stop)
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or len(value) != n:
        raise TypeError(f"site {stop.name!r}: expected a list of {n} str inside a pyro.plate of {n}, got {value!r:.80}")
    bad = [v for v in value if not isinstance(v, str)]
    if bad:
        raise TypeError(f"site {stop.name!r}: expected a list of {n} str, got an item {bad[0]!r}")


def _site_model(stop: Stop):
    """The LM site's model; a missing default model is reported with the site's name."""
    try:
        return stop.fn.model
    except Exception as err:
        _add_note(err, f"llmppl.infer: needed by site {stop.name!r}")
        raise


def checked_float(value: float, name: str, what: str) -> float:
    """``value`` as a float; ``ValueError`` naming the site for NaN or ``+inf``.

    >>> checked_float(float("-inf"), "x", "log-probability")
    -inf
    >>> checked_float(float("nan"), "x", "log-probability")
    Traceback (most recent call last):
    ...
    ValueError: site 'x': log-probability: expected a number in [-inf, +inf), got nan
    """
    if math.isnan(value) or value == math.inf:
        raise ValueError(f"site {name!r}: {what}: expected a number in [-inf, +inf), got {value}")
    return value


def scaled_log_prob(lp, scale, mask, name: str) -> float:
    """The sum of a site's log-probability with Pyro's ``scale`` and ``mask`` (``0 * -inf = 0``).

    >>> scaled_log_prob(torch.tensor([-1.0, float("-inf")]), 2.0, torch.tensor([True, False]), "x")
    -2.0
    """
    plain_scale = scale is None or (not isinstance(scale, torch.Tensor) and scale == 1)
    if isinstance(lp, float) and mask is None and plain_scale:
        return checked_float(lp, name, "log-probability")
    t = _as_log_prob(lp, name, "log-probability")
    if mask is not None and mask is not True:
        if mask is False:
            return 0.0
        t = torch.where(torch.as_tensor(mask, dtype=torch.bool), t, torch.zeros((), dtype=t.dtype))
    if scale is not None and (isinstance(scale, torch.Tensor) or scale != 1):
        s = torch.as_tensor(scale, dtype=t.dtype)
        t = torch.where(s == 0, torch.zeros((), dtype=t.dtype), t * s)
    return checked_float(float(t.sum()), name, "log-probability")


def potential_key(potential) -> tuple:
    """Which potentials are the same function, so their particles are steered together.

    Every particle re-runs the model, so a potential written inline
    (``LM(..., potential=lambda s: ...)``) is a new function object in each: two are the
    same when they share code, defaults and the values they close over (compared by
    value when hashable, else by identity). Any other callable is itself.

    >>> make = lambda k: (lambda s: -len(s) * k)
    >>> potential_key(make(2)) == potential_key(make(2)), potential_key(make(2)) == potential_key(make(3))
    (True, False)
    """
    code = getattr(potential, "__code__", None)
    if code is None:
        return ("object", id(potential))

    def frozen(x):
        try:
            hash(x)
        except TypeError:
            return ("id", id(x))
        return ("value", type(x), x)

    try:
        cells = tuple(frozen(c.cell_contents) for c in potential.__closure__ or ())
    except ValueError:  # an empty cell
        return ("object", id(potential))
    defaults = tuple(frozen(d) for d in potential.__defaults__ or ())
    kwdefaults = tuple(sorted((k, frozen(v)) for k, v in (potential.__kwdefaults__ or {}).items()))
    owner = getattr(potential, "__self__", None)
    return ("function", code, id(potential.__globals__), cells, defaults, kwdefaults, id(owner))


def call_potential(fn, text: str, name: str) -> float:
    """``fn.potential(text)`` as a float, naming the site on NaN, ``+inf`` or an exception.

    >>> from llmppl.distributions import LM
    >>> from llmppl.models import ToyLM
    >>> call_potential(LM("", model=ToyLM(), potential=lambda s: -len(s)), "ab", "x")
    -2.0
    """
    try:
        value = fn.potential(text)
    except Exception as err:
        _add_note(err, f"llmppl.infer: raised by the potential of site {name!r} on the partial string {text!r}")
        raise
    return checked_float(float(_as_log_prob(value, name, "potential")), name, f"potential({text!r})")


class Engine:
    """Advance particles of one program in rounds (see the module docstring).

    :param callable program: a Pyro model or guide.
    :param tuple args: its positional arguments.
    :param dict kwargs: its keyword arguments.
    :param str mode: ``"model"`` (the weight adds observed sites and guide-provided
        values) or ``"guide"`` (the weight subtracts the log-density of every latent site).
    :param bool steer: extend LM sites that have a ``potential`` token by token
        (else sample them plainly and add ``potential(value)`` to the weight).
    :param resampling: resampler name or callable for token-level steering.
    :param float ess_threshold: token-level steering resamples when ESS < this × group size.

    >>> Engine(lambda: None).run([Particle()])[0].done
    True
    """

    def __init__(
        self,
        program: Callable,
        args: tuple = (),
        kwargs: dict | None = None,
        *,
        mode: str = "model",
        steer: bool = True,
        resampling="systematic",
        ess_threshold: float = 0.5,
    ):
        if mode not in ("model", "guide"):
            raise ValueError(f"mode: expected 'model' or 'guide', got {mode!r}")
        self.program = program
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.mode = mode
        self.steer = steer
        self.resampling = resampling
        self.ess_threshold = ess_threshold
        self.round = 0
        self.num_sample_calls = 0
        self.num_score_calls = 0
        self.num_steering_resamples = 0
        self.model_seconds = 0.0  # wall time inside LanguageModel calls (for overhead figures)
        self.model_cpu_seconds = 0.0  # the same in process CPU time

    # ------------------------------------------------------------ the loop

    def run(self, particles: list[Particle], *, on_round=None, progress=None, raise_if_all_dead: bool = True):
        """Advance ``particles`` (in place) until every program has returned or died.

        :param on_round: called as ``on_round(particles)`` after scoring, before sampling;
            may replace list items (resampling).
        :param progress: a tqdm bar counting finished particles, or ``None``.
        :returns: ``particles``.
        """
        finished = 0
        while True:
            live = [i for i, p in enumerate(particles) if not p.done]
            if not live:
                break
            self.round += 1
            for i in live:
                self.execute(particles[i], i)
            self.score_stopped(particles)
            if raise_if_all_dead:
                self.check_alive(particles)
            if on_round is not None:
                on_round(particles)
            self.sample_stopped(particles)
            if raise_if_all_dead:
                self.check_alive(particles)
            if progress is not None:
                # particles tend to finish together in the last round: show the rounds too
                now = sum(p.done for p in particles)
                progress.set_postfix_str(f"round {self.round}, {len(particles) - now} running", refresh=False)
                progress.update(now - finished)
                finished = now
        return particles

    def check_alive(self, particles: list[Particle]) -> None:
        """Raise :class:`InferenceError` naming the site when every particle has zero weight."""
        if not particles or not all(p.dead for p in particles):
            return
        last = max(p.dead_round for p in particles)
        counts = Counter(p.dead_at for p in particles if p.dead_round == last)
        site, num = counts.most_common(1)[0]
        raise InferenceError(
            f"every particle has zero weight: the last {num} of {len(particles)} died at site {site!r} "
            f"(round {last}); the observations or factors there are impossible under the particles' values. "
            "Use more particles, a guide, or check the observed values",
            site=site,
        )

    def _kill(self, p: Particle, site: str) -> None:
        p.log_weight = _NEG_INF
        p.done = True
        p.stop = None
        if p.dead_at is None:
            p.dead_at = site
            p.dead_round = self.round

    def add(self, p: Particle, site: str, log_prob: float) -> None:
        """Add one site's contribution to the particle's weight (kills it at ``-inf``)."""
        p.site_logp[site] = log_prob
        if log_prob == _NEG_INF:
            self._kill(p, site)
        elif log_prob != 0.0:
            p.log_weight += log_prob

    # ------------------------------------------------------------ one particle

    def execute(self, p: Particle, index: int = 0) -> None:
        """Re-execute one particle up to its next LM site (or the end) and count new sites."""
        m = ReplayStopMessenger(p.values, p.scores, provided=p.provided, trail=p.trail)
        try:
            with m:
                ret = self.program(*self.args, **self.kwargs)
        except Stop as stop:
            p.stop = stop
        except ReplayError:
            raise
        except Exception as err:
            where = f"after site {m.last_site!r}" if m.last_site is not None else "before its first sample site"
            _add_note(err, f"llmppl.infer: raised by the program of particle {index} {where} (the last site reached)")
            raise
        else:
            if len(m.trail) < len(p.trail):
                raise ReplayError(
                    f"site {p.trail[len(m.trail)][0]!r}: the model diverged under replay: it returned before "
                    "reaching this site, which it reached in the previous round with the same values. "
                    "Randomness outside pyro.sample (Python's random, numpy.random, time) cannot be replayed, "
                    "nor can a site hidden by poutine.block; draw it with an unblocked pyro.sample"
                )
            p.done = True
            p.ret = ret
            p.stop = None
        p.trail = tuple(m.trail)
        p.sites = m.sites
        for s in m.sites:
            if s.name in p.site_logp:
                continue
            lp = self._contribution(p, s)
            if lp is not None:
                self.add(p, s.name, lp)
                if p.dead:
                    return

    def _contribution(self, p: Particle, s: SiteRecord) -> float | None:
        """What a site adds to the weight when first reached (``None``: nothing)."""
        fn, name, value = s.fn, s.name, s.value
        potential = getattr(fn, "potential", None) if s.is_lm else None  # none inside a vectorised plate
        if self.mode == "guide":
            if s.is_observed:
                return None
            lp = scaled_log_prob(p.scores[name] if s.is_lm else fn.log_prob(value), s.scale, s.mask, name)
            if lp == _NEG_INF:
                raise ValueError(f"guide site {name!r}: expected its sampled value to have positive density, got -inf")
            return -lp
        if s.is_observed:
            lp = p.scores[name] if s.is_lm else fn.log_prob(value)
        elif name in p.provided:
            if s.is_lm:
                lp = p.scores[name] + (call_potential(fn, value, name) if potential is not None else 0.0)
            else:
                lp = fn.log_prob(value)
        elif potential is not None:
            lp = call_potential(fn, value, name)  # sampled plainly (no steering): weigh by the potential
        else:
            return None
        return scaled_log_prob(lp, s.scale, s.mask, name)

    # ------------------------------------------------------------ batched LM work

    def generator(self) -> torch.Generator:
        """A CPU generator seeded from torch's global RNG."""
        return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))

    def _timed(self, fn, *args, **kwargs):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            self.model_seconds += time.perf_counter() - t0
            self.model_cpu_seconds += time.process_time() - c0

    def score_stopped(self, particles: list[Particle]) -> None:
        """One ``model.score`` per (model, decoding settings) over every particle stopped to be scored."""
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(particles):
            if p.done or p.stop is None or p.stop.kind != "score":
                continue
            fn = p.stop.fn
            _check_lm_value(p.stop)
            key = (id(_site_model(p.stop)), fn.max_tokens, fn.stop, fn.temperature, fn.top_k)
            groups.setdefault(key, []).append(i)
        for idx in groups.values():
            stops = [particles[i].stop for i in idx]
            fn0 = stops[0].fn
            prompts = [s.fn.prompt for s in stops for _ in range(_strings(s))]
            values = [v for s in stops for v in ([s.value] if s.shape is None else s.value)]
            try:
                flat = self._timed(fn0.model.score, prompts, values, **fn0.decoding_kwargs()).tolist()
            except Exception as err:
                names = sorted({s.name for s in stops})
                _add_note(err, f"llmppl.infer: raised while scoring site(s) {names} in one batch of {len(idx)}")
                raise
            self.num_score_calls += 1
            for i, s, lp in zip(idx, stops, _unflatten(stops, flat, log_probs=True), strict=True):
                p = particles[i]
                p.scores[s.name] = lp
                p.stop = None
                # counted now, so that resampling right after sees it
                if self.mode == "model":
                    extra = call_potential(s.fn, s.value, s.name) if (not s.is_observed and s.fn.potential) else 0.0
                    # (a potential inside a vectorised plate is refused when the site is reached)
                    self.add(p, s.name, scaled_log_prob(lp + extra, s.scale, s.mask, s.name))

    def sample_stopped(self, particles: list[Particle]) -> None:
        """One ``model.sample`` per group over every particle stopped at a latent LM site; steer the rest."""
        plain: dict[tuple, list[int]] = {}
        steered: dict[tuple, list[int]] = {}
        for i, p in enumerate(particles):
            if p.done or p.stop is None:
                continue
            s = p.stop
            assert s.kind == "sample", s.kind
            fn = s.fn
            key = (id(_site_model(s)), fn.max_tokens, fn.stop, fn.temperature, fn.top_k)
            if fn.potential is not None and self.mode == "guide":
                raise ValueError(
                    f"guide site {s.name!r}: expected an LM without a potential in a guide (a steered proposal "
                    "has no tractable density); move the potential to the model"
                )
            if fn.potential is not None and self.steer:
                steered.setdefault((*key, potential_key(fn.potential)), []).append(i)
            else:
                plain.setdefault(key, []).append(i)
        for idx in plain.values():
            stops = [particles[i].stop for i in idx]
            fn0 = stops[0].fn
            prompts = [s.fn.prompt for s in stops for _ in range(_strings(s))]
            try:
                completions = self._timed(
                    fn0.model.sample, prompts, generator=self.generator(), **fn0.decoding_kwargs()
                )
            except Exception as err:
                names = sorted({s.name for s in stops})
                _add_note(err, f"llmppl.infer: raised while sampling site(s) {names} in one batch of {len(idx)}")
                raise
            self.num_sample_calls += 1
            texts = _unflatten(stops, [c.text for c in completions], log_probs=False)
            scores = _unflatten(stops, [c.log_prob for c in completions], log_probs=True)
            for i, s, text, lp in zip(idx, stops, texts, scores, strict=True):
                p = particles[i]
                p.values[s.name] = text
                p.scores[s.name] = lp
                p.stop = None
        if steered:
            from .steering import steer

            for idx in steered.values():
                steer(self, particles, idx)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def set_postfix_str(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, enabled: bool):
    """A ``tqdm.auto`` bar (notebook widget in Jupyter), or a no-op when ``enabled`` is false.

    >>> progress_bar(3, "particles", False).update(1)
    """
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="particle", leave=False)


def check_count(value, name: str, where: str) -> int:
    """``value`` if it is an int >= 1, else ``TypeError``/``ValueError`` naming the argument.

    >>> check_count(0, "num_samples", "Importance")
    Traceback (most recent call last):
    ...
    ValueError: Importance: num_samples: expected an int >= 1, got 0
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}: {name}: expected an int >= 1, got {type(value).__name__} ({value!r})")
    if value < 1:
        raise ValueError(f"{where}: {name}: expected an int >= 1, got {value}")
    return value


def check_program(fn, name: str, where: str):
    """``fn`` if callable, else ``TypeError`` naming the argument.

    >>> check_program(3, "model", "SMC")
    Traceback (most recent call last):
    ...
    TypeError: SMC: model: expected a callable Pyro program, got int
    """
    if not callable(fn):
        raise TypeError(f"{where}: {name}: expected a callable Pyro program, got {type(fn).__name__}")
    return fn


def posterior_from(particles: list[Particle], *, algorithm: str, log_evidence=None, diagnostics=None):
    """A :class:`~llmppl.inference.posterior.Posterior` of finished particles.

    >>> posterior_from([Particle(values={"x": "a"}, done=True)], algorithm="test").marginal("x").mode()
    'a'
    """
    from .posterior import Posterior

    return Posterior(
        [p.all_values() for p in particles],
        torch.tensor([p.log_weight for p in particles], dtype=torch.float64),
        return_values=[p.ret for p in particles],
        log_evidence=log_evidence,
        sites=[p.sites for p in particles],
        algorithm=algorithm,
        diagnostics=diagnostics,
    )
