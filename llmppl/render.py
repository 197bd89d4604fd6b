"""Cascades as graphical models (layer L3): :func:`model_graph` and :func:`render_model`.

Dependencies are found by **intervention**, not by reading source code. The model runs
once to get a reference execution; then, for each site, it runs again with every other
site's value replayed and that one site's value replaced by a unique marker (for a
tensor site, a different value). Every later site whose prompt, distribution
parameters, observed value, existence or order changed gets an edge from it. Because
values are replayed, only *direct* dependencies show: f-strings, ``+``, ``join``,
``re.sub``, ``.format`` and an ``if`` on a sampled value alike, while a value that is
only printed adds no edge. The intervention runs never call a language model (every
``LM`` site gets its value from the replay or a placeholder, and nothing is scored).

Rendering follows ``pyro.infer.inspect`` in three steps: relations (a plain dict, see
:func:`model_relations`) → a ``networkx.DiGraph`` (:func:`model_graph`) → a
``graphviz.Digraph`` (:func:`render_model`), with graphviz imported only there.

>>> import pyro
>>> from llmppl.distributions import LM
>>> from llmppl.models import ToyLM
>>> lm = ToyLM(alphabet="ab")
>>> def scratchpad(question):
...     work = pyro.sample("work", LM(f"{question}a", model=lm, max_tokens=3))
...     return pyro.sample("answer", LM(f"{question}{work}b", model=lm, max_tokens=2))
>>> g = model_graph(scratchpad, ("ab",))
>>> list(g.nodes), list(g.edges), g.nodes["answer"]["prompt"]
(['work', 'answer'], [('work', 'answer')], 'ab{work}b')
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
from collections.abc import Callable
from pathlib import Path

import networkx as nx
import pyro
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample

from llmppl.distributions import LM, Categorical, Delta, IIDStrings, StringDistribution
from llmppl.distributions.strings import _short

__all__ = ["model_graph", "model_relations", "render_model"]

_KINDS = ("sample", "observed", "factor", "deterministic")
_PROMPT_WIDTH = 48


_MARK_OPEN, _MARK_CLOSE = "\u27e6", "\u27e7"  # characters no prompt or tokenizer output is likely to contain


def _marker(name: str) -> str:
    return f"{_MARK_OPEN}{name}{_MARK_CLOSE}"


class _Site:
    """What one run recorded about one sample site."""

    __slots__ = ("fn", "is_observed", "kind", "name", "plates", "signature", "value")

    def __init__(self, msg: dict):
        self.name = msg["name"]
        self.fn = msg["fn"]
        self.value = msg["value"]
        self.is_observed = bool(msg["is_observed"])
        self.kind = _kind(msg)
        self.plates = tuple(f.name for f in msg["cond_indep_stack"])  # outermost first
        sig = _signature(self.fn)
        self.signature = (sig, _freeze(self.value)) if self.is_observed else sig


class _InterveneMessenger(Messenger):
    """Replays ``values`` (latent sites only), overrides the sites in ``overrides`` and records every site.

    Sites that are neither replayed nor overridden are sampled as usual when ``block``
    is false (the reference run); when ``block`` is true a string site gets a placeholder
    instead, so no language model is called.
    """

    def __init__(self, values: dict, overrides: dict, *, block: bool):
        super().__init__()
        self.values = values
        self.overrides = overrides
        self.block = block
        self.sites: list[_Site] = []

    def _pyro_sample(self, msg):
        if isinstance(msg["fn"], _Subsample) or msg["done"]:
            return
        name = msg["name"]
        if name in self.overrides:
            msg["value"] = self.overrides[name]
            msg["done"] = True
        elif msg["is_observed"]:
            return
        elif name in self.values:
            msg["value"] = self.values[name]
            msg["done"] = True
        elif self.block and _is_string_dist(msg["fn"]):
            msg["value"] = _string_marker(msg["fn"], name)
            msg["done"] = True
        elif isinstance(_unwrap(msg["fn"]), LM) and _unwrap(msg["fn"]).potential is not None:
            # plain sampling cannot honour a potential (that needs an inference engine); the
            # graph only needs some value of the site, so draw it from the unsteered LM
            unsteered = copy.copy(_unwrap(msg["fn"]))
            unsteered.potential = None
            msg["value"] = unsteered.sample()
            msg["done"] = True

    def _postprocess_message(self, msg):
        if msg["type"] == "sample" and not isinstance(msg["fn"], _Subsample):
            self.sites.append(_Site(msg))


def _unwrap(fn):
    """The distribution under pyro's mask/expand/independent wrappers."""
    while hasattr(fn, "base_dist") and not isinstance(fn, IIDStrings):
        fn = fn.base_dist
    return fn


def _is_string_dist(fn) -> bool:
    return isinstance(_unwrap(fn), (StringDistribution, IIDStrings))


def _string_marker(fn, name: str):
    base = _unwrap(fn)
    if isinstance(base, IIDStrings):
        return [_marker(f"{name}[{i}]") for i in range(base.n)]
    return _marker(name)


def _kind(msg: dict) -> str:
    base = _unwrap(msg["fn"])
    if isinstance(base, pyro.distributions.Unit):
        return "factor"
    if msg["infer"].get("_deterministic") or isinstance(base, Delta):
        return "deterministic"
    if isinstance(base, IIDStrings) and isinstance(base.base_dist, Delta):
        return "deterministic"
    return "observed" if msg["is_observed"] else "sample"


def _freeze(x):
    """A hashable, comparable snapshot of a value or parameter."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        return ("tensor", tuple(x.shape), str(x.dtype), tuple(x.reshape(-1).tolist()))
    if isinstance(x, (list, tuple)):
        return tuple(_freeze(v) for v in x)
    if isinstance(x, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in x.items()))
    try:
        hash(x)
    except TypeError:
        return repr(x)
    return x


def _prompt(fn) -> str | None:
    base = _unwrap(fn)
    if isinstance(base, IIDStrings):
        base = base.base_dist
    return getattr(base, "prompt", None) if isinstance(getattr(base, "prompt", None), str) else None


def _signature(fn):
    """Everything about a site's distribution that a parent could change (not its value)."""
    base = _unwrap(fn)
    if isinstance(base, IIDStrings):
        return ("IIDStrings", base.n, _signature(base.base_dist))
    if isinstance(base, LM):
        return ("LM", base.prompt, base.max_tokens, base.stop, base.temperature, base.top_k)
    if isinstance(base, Delta):
        return ("Delta", base.v, base.log_density)
    if isinstance(base, Categorical):
        return ("Categorical", tuple(base.values), _freeze(base.logits))
    if isinstance(base, StringDistribution):
        return (type(base).__name__, _freeze({k: v for k, v in vars(base).items() if not k.startswith("_")}))
    params = {}
    for k in getattr(base, "arg_constraints", {}):
        with contextlib.suppress(Exception):
            params[k] = getattr(base, k)
    if isinstance(base, pyro.distributions.Delta):
        params["v"] = base.v
    return (type(base).__name__, _freeze(params))


def _perturb(text: str) -> str:
    """The same shape with every letter and digit changed: a fallback for code that parses values."""
    out = []
    for c in text:
        if c.isdigit():
            out.append(str((int(c) + 1) % 10))
        elif c.isalpha() and c.isascii():
            base = ord("a") if c.islower() else ord("A")
            out.append(chr(base + (ord(c) - base + 1) % 26))
        else:
            out.append(c)
    return "".join(out)


class _Recorder(str):
    """A site's own value that notes the strings the program compares it with.

    ``x == "yes"``, ``x in ("yes", "no")``, ``"7" in x``, ``x.startswith("1")`` and the
    like, also after ``strip``/``lower``/``upper``/``casefold``, add a value that makes
    the test come out the other way to ``wanted``: an ``if`` on a sampled string is then
    caught even when no generic probe happens to flip it.
    """

    wanted: list

    def __new__(cls, value: str, wanted: list):
        obj = super().__new__(cls, value)
        obj.wanted = wanted
        return obj

    def _note(self, value) -> None:
        if isinstance(value, str) and len(self.wanted) < _MAX_RECORDED:
            self.wanted.append(str(value))

    def __eq__(self, other):
        self._note(other)
        return str.__eq__(self, other)

    def __ne__(self, other):
        self._note(other)
        return str.__ne__(self, other)

    __hash__ = str.__hash__

    def __contains__(self, sub):
        self._note(str(self) + sub if isinstance(sub, str) else None)
        return str.__contains__(self, sub)

    def startswith(self, prefix, *args):
        for p in prefix if isinstance(prefix, tuple) else (prefix,):
            self._note(p + str(self) if isinstance(p, str) else None)
        return str.startswith(self, prefix, *args)

    def endswith(self, suffix, *args):
        for p in suffix if isinstance(suffix, tuple) else (suffix,):
            self._note(str(self) + p if isinstance(p, str) else None)
        return str.endswith(self, suffix, *args)

    def _same(self, method: str, *args):
        return _Recorder(getattr(str, method)(self, *args), self.wanted)

    def strip(self, *args):
        return self._same("strip", *args)

    def lstrip(self, *args):
        return self._same("lstrip", *args)

    def rstrip(self, *args):
        return self._same("rstrip", *args)

    def lower(self):
        return self._same("lower")

    def upper(self):
        return self._same("upper")

    def casefold(self):
        return self._same("casefold")


_MAX_RECORDED = 16  # compared-with strings kept per site
_MAX_SUPPORT = 32  # a discrete site with at most this many values is tried at every one


def _string_probes(v: str) -> list[str]:
    """Generic values for a string site: the same shape changed, empty, one and sixteen
    characters longer (the last one repeated: digits stay digits), one shorter."""
    last = v[-1] if v else "a"
    return [_perturb(v), "", v + last, v + last * 16, v[:-1]]


def _interventions(site: _Site, seen: list, recorded: list) -> list:
    """Values to put at ``site``: the marker first, then values that may flip control flow.

    ``seen`` are other values the site took (in a posterior's particles) and ``recorded``
    the strings the program compared it with (:class:`_Recorder`): an ``if`` that tests
    for one particular string is only caught by trying that string.
    """
    v = site.value
    base = _unwrap(site.fn)
    if isinstance(v, str) and isinstance(base, Categorical):  # its values are all it can take
        return [x for x in dict.fromkeys([_marker(site.name), *base.values]) if x != v]
    if isinstance(v, str):
        values = [_marker(site.name), *_string_probes(v), *recorded, *(x for x in seen if isinstance(x, str))]
        return [x for x in dict.fromkeys(values) if x != v]
    if isinstance(v, list) and all(isinstance(s, str) for s in v):
        return [_string_marker(site.fn, site.name), [_perturb(s) for s in v]]
    if isinstance(v, torch.Tensor) and v.numel() > 0:
        if v.is_floating_point() or v.is_complex():
            return [v + 1, v - 1, -v]
        support = _small_support(base, v)
        if support is not None:
            return [x for x in support if not torch.equal(x, v)]
        return [(v == 0).to(v.dtype), v + 1]
    return []


def _small_support(base, v: torch.Tensor) -> list | None:
    """Every value of a discrete site with few values (a scalar site only), else ``None``."""
    if v.numel() != 1 or not getattr(base, "has_enumerate_support", False):
        return None
    with contextlib.suppress(Exception):
        support = base.enumerate_support(expand=False).reshape(-1)
        if support.numel() <= _MAX_SUPPORT:
            return [x.reshape(v.shape).to(v.dtype) for x in support]
    return None


def _run(model, args, kwargs, values, overrides, *, block: bool, rng_state=None):
    """One run under :class:`_InterveneMessenger`; returns ``(sites, error)`` (a partial run on error).

    With ``rng_state`` (``pyro.util.get_rng_state()``) the run starts from that state, so
    randomness in the program itself (a ``random.choice`` of few-shot examples) is the same
    in every run and does not look like a dependency.
    """
    if rng_state is not None:
        pyro.util.set_rng_state(rng_state)
    msngr = _InterveneMessenger(values, overrides, block=block)
    error = None
    quiet = contextlib.redirect_stdout(io.StringIO()) if block else contextlib.nullcontext()
    with quiet, pyro.poutine.block(), msngr:
        try:
            model(*args, **kwargs)
        except Exception as err:
            error = err
    return msngr.sites, error


def _changed(reference: list[_Site], run: list[_Site], start: int) -> set[str]:
    """Sites after ``reference[start]`` whose signature, existence or relative order differs.

    A run cut short by an error lacks the later sites, so they count as changed (conservative).
    """
    ref_after = {s.name: s for s in reference[start + 1 :]}
    ref_all = {s.name for s in reference}
    got = {s.name: s for s in run}
    changed = set()
    for name, s in ref_after.items():
        if name not in got:
            changed.add(name)
        elif got[name].signature != s.signature or got[name].kind != s.kind:
            changed.add(name)
    changed.update(name for name in _new_sites(reference, run, start) if name not in ref_all)
    # order: compare the common sites' sequences
    common_ref = [s.name for s in reference[start + 1 :] if s.name in got]
    common_run = [s.name for s in run if s.name in ref_after]
    changed.update(a for a, b in zip(common_ref, common_run, strict=False) if a != b)
    return changed


def _new_sites(reference: list[_Site], run: list[_Site], start: int) -> list[str]:
    """Sites of ``run`` that the reference lacks, less the renamed ones.

    A site whose *name* is built from a parent's value (``f"y_{x}"``) is renamed, not new,
    under an intervention on that parent: a missing reference site and a new one in the
    same place, in order, are paired off (the missing one already counts as changed).
    """
    ref_names = {s.name for s in reference}
    got = {s.name for s in run}
    missing = [s for s in reference[start + 1 :] if s.name not in got]
    new = [s for s in run if s.name not in ref_names]
    out = []
    for s in new:
        twin = next((m for m in missing if m.kind == s.kind and type(_unwrap(m.fn)) is type(_unwrap(s.fn))), None)
        if twin is not None:
            missing.remove(twin)
        else:
            out.append(s.name)
    return out


def _template(prompt: str, markers: dict[str, str], parents=()) -> str:
    """``prompt`` with each marker (also upper- or lower-cased) as ``{name}``, and what is left
    of a cut marker (``x[:2]``) as ``{name…}`` (a piece that fits several markers: the
    parent's among them, or ``{…}``)."""
    for name, marker in markers.items():
        for m in dict.fromkeys((marker, marker.upper(), marker.lower())):
            prompt = prompt.replace(m, "{" + name + "}")
    if _MARK_OPEN not in prompt and _MARK_CLOSE not in prompt:
        return prompt
    lowered = {name: m.lower() for name, m in markers.items()}

    def piece(text: str, fits) -> str:
        names = [n for n, m in lowered.items() if fits(m, text.lower())]
        if len(names) > 1:
            names = [n for n in names if n in parents] or names
        return "{" + (names[0] if len(names) == 1 else "") + "\u2026}"

    out, i = [], 0
    while i < len(prompt):
        c = prompt[i]
        if c == _MARK_OPEN:  # the head of a marker: as much of it as matches one
            k = 1
            while i + k < len(prompt) and any(m.startswith(prompt[i : i + k + 1].lower()) for m in lowered.values()):
                k += 1
            out.append(piece(prompt[i : i + k], str.startswith))
            i += k
        elif c == _MARK_CLOSE:  # the tail of one: take back what matches its end
            head = "".join(out)
            k = 0
            while k < len(head) and any(m.endswith((head[len(head) - k - 1 :] + c).lower()) for m in lowered.values()):
                k += 1
            out = [head[: len(head) - k], piece(head[len(head) - k :] + c, str.endswith)]
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _shorten(text: str, width: int = _PROMPT_WIDTH) -> str:
    return _short(text, width)


def _reference_values(posterior) -> dict:
    """The values of the posterior's highest-weight particle (so no LM call is needed)."""
    lw = posterior.log_weights
    return dict(posterior.values[int(torch.argmax(lw))])


def _seen_values(posterior, name: str, limit: int = 8) -> list:
    """Up to ``limit`` distinct string values of site ``name`` across the posterior's particles."""
    out = []
    for v in posterior.values:
        x = v.get(name)
        if isinstance(x, str) and x not in out:
            out.append(x)
            if len(out) == limit:
                break
    return out


def _diagnostics(posterior, name: str, kind: str) -> dict:
    out = {}
    reached = [i for i, v in enumerate(posterior.values) if name in v]
    if reached:
        lw = posterior.log_weights[reached]
        if bool(torch.isfinite(lw).any()):
            out["ess"] = float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)))
        else:
            out["ess"] = 0.0
    rate = getattr(posterior, "diagnostics", {}).get("acceptance_rate")
    if rate is not None and math.isfinite(rate):
        out["acceptance_rate"] = float(rate)
    if kind == "sample" and out.get("ess", 0.0) > 0:
        with contextlib.suppress(KeyError, RuntimeError, ValueError):
            value, prob = posterior.marginal(name).top(1)[0]
            out["top_value"], out["top_prob"] = value, float(prob)
    return out


def _edges(model, args, kwargs, reference: list[_Site], ref_values: dict, posterior, rng):
    """``(edges, info, order)``: the direct dependencies, every site seen (reference and
    under intervention) by name, and their execution order."""
    order = [s.name for s in reference]
    info: dict[str, _Site] = {s.name: s for s in reference}
    edges: list[tuple[str, str]] = []
    for i, site in enumerate(reference):
        seen = _seen_values(posterior, site.name) if posterior is not None else []
        recorded: list[str] = []
        if isinstance(site.value, str):
            _run(
                model, args, kwargs, ref_values, {site.name: _Recorder(site.value, recorded)}, block=True, rng_state=rng
            )
        probes = _interventions(site, seen, recorded)
        runs = [_run(model, args, kwargs, ref_values, {site.name: v}, block=True, rng_state=rng) for v in probes]
        # A value the program rejects (e.g. a marker given to a parser) tells little: use the
        # runs that finished, and only when none did, the first one, conservatively.
        clean = [sites for sites, err in runs if err is None]
        children: set[str] = set()
        for sites in (clean or [runs[0][0]]) if runs else []:
            children |= _changed(reference, sites, i)
            new = set(_new_sites(reference, sites, i))
            for j, s in enumerate(sites):  # sites only reached under intervention
                if s.name in new and s.name not in info:
                    info[s.name] = s
                    prev = [t.name for t in sites[:j] if t.name in order]
                    order.insert(order.index(prev[-1]) + 1 if prev else len(order), s.name)
        edges += [(site.name, c) for c in order if c in children and c != site.name]
    return edges, info, order


def _templated(model, args, kwargs, reference: list[_Site], ref_values: dict, rng) -> dict[str, _Site]:
    """One run with every string site's value replaced by its marker, for prompt templates."""
    overrides = {s.name: _string_marker(s.fn, s.name) for s in reference if _is_string_dist(s.fn)}
    templated, _ = _run(model, args, kwargs, ref_values, overrides, block=True, rng_state=rng)
    return {s.name: s for s in templated}


def model_relations(model: Callable, model_args=(), model_kwargs=None, *, posterior=None) -> dict:
    """The model's sites and direct dependencies, found by intervention, as a plain dict.

    Keys: ``"sites"`` (name -> attributes, in execution order), ``"edges"`` (parent,
    child pairs), ``"plates"`` (plate name -> enclosing plate or ``None``). Without a
    ``posterior`` the reference run samples each latent site once (the only language
    model calls made); with one, the highest-weight particle's values are replayed and
    no language model is called.

    :param model: a Pyro model function.
    :param tuple model_args: its positional arguments.
    :param dict model_kwargs: its keyword arguments.
    :param posterior: an optional :class:`~llmppl.inference.Posterior` for diagnostics.

    >>> import pyro
    >>> from llmppl.distributions import Delta
    >>> def echo(x):
    ...     y = pyro.sample("y", Delta(x + "!"))
    ...     pyro.sample("z", Delta(y.upper()))
    >>> rel = model_relations(echo, ("hi",))
    >>> rel["edges"], rel["sites"]["z"]["kind"]
    ([('y', 'z')], 'deterministic')
    """
    if not callable(model):
        raise TypeError(f"model_graph: model: expected a callable Pyro model, got {type(model).__name__}")
    if not isinstance(model_args, (tuple, list)):
        raise TypeError(f"model_graph: model_args: expected a tuple, got {type(model_args).__name__}")
    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise TypeError(f"model_graph: model_kwargs: expected a dict or None, got {type(model_kwargs).__name__}")
    args, kwargs = tuple(model_args), dict(model_kwargs or {})

    values = _reference_values(posterior) if posterior is not None else {}
    reference, error = _run(model, args, kwargs, values, {}, block=posterior is not None)
    if error is not None:
        raise error
    if len({s.name for s in reference}) != len(reference):
        raise ValueError("model_graph: site names repeat within one run; expected unique names")
    ref_values = {s.name: s.value for s in reference if not s.is_observed}
    # Every later run replays the values and starts from this random state, so the
    # program's own randomness is the same in all of them; the user's state is put back.
    rng = pyro.util.get_rng_state()
    try:
        replayed, error = _run(model, args, kwargs, ref_values, {}, block=True, rng_state=rng)
        if error is None and [s.name for s in replayed] == [s.name for s in reference]:
            reference = replayed
        edges, info, order = _edges(model, args, kwargs, reference, ref_values, posterior, rng)
        templated = _templated(model, args, kwargs, reference, ref_values, rng)
    finally:
        pyro.util.set_rng_state(rng)
    reached = {s.name for s in reference}
    markers = {s.name: _marker(s.name) for s in reference if isinstance(s.value, str)}
    for s in reference:
        if isinstance(s.value, list) and all(isinstance(v, str) for v in s.value):
            markers.update({f"{s.name}[{i}]": _marker(f"{s.name}[{i}]") for i in range(len(s.value))})
    parents_of: dict[str, list[str]] = {}
    for p, c in edges:
        parents_of.setdefault(c, []).append(p)

    sites_out = {}
    for name in order:
        s = info[name]
        prompt = _prompt(s.fn)
        t = templated.get(name)
        if prompt is not None and t is not None and _prompt(t.fn) is not None:
            prompt = _template(_prompt(t.fn), markers, parents_of.get(name, ()))
        elif prompt is not None:
            for p in sorted(parents_of.get(name, ()), key=lambda p: -len(str(ref_values.get(p, "")))):
                v = ref_values.get(p)
                if isinstance(v, str) and len(v) >= 2:
                    prompt = prompt.replace(v, "{" + p + "}")
            prompt = _template(prompt, markers, parents_of.get(name, ()))
        base = _unwrap(s.fn)
        attrs = {
            "kind": s.kind,
            "distribution": type(base.base_dist if isinstance(base, IIDStrings) else base).__name__,
            "prompt": prompt,
            "plates": s.plates,
            "reached": name in reached,
        }
        if posterior is not None:
            attrs.update(_diagnostics(posterior, name, s.kind))
        sites_out[name] = attrs

    plates: dict[str, str | None] = {}
    for name in order:
        chain = info[name].plates
        for k, p in enumerate(chain):
            plates.setdefault(p, chain[k - 1] if k else None)
    return {"sites": sites_out, "edges": edges, "plates": plates}


def model_graph(model: Callable, model_args=(), model_kwargs=None, *, posterior=None) -> nx.DiGraph:
    """The model as a ``networkx.DiGraph``: sites in execution order, edges by intervention.

    Node attributes: ``kind`` (``"sample"``, ``"observed"``, ``"factor"`` or
    ``"deterministic"``), ``distribution`` (class name), ``prompt`` (the prompt template:
    each parent's value shown as ``{parent}``; ``None`` for sites without a prompt),
    ``plates`` (outermost first) and ``reached`` (false for a site that only appeared
    when a parent's value was changed). With ``posterior``, also ``ess`` (of the particles
    that reached the site), ``acceptance_rate`` when the posterior has one, and for
    sample sites ``top_value``/``top_prob`` (the marginal's mode and its probability).
    The graph attribute ``plates`` maps each plate to its enclosing plate.

    :param model: a Pyro model function.
    :param tuple model_args: its positional arguments.
    :param dict model_kwargs: its keyword arguments.
    :param posterior: an optional :class:`~llmppl.inference.Posterior` of ``model``.
    :returns: ``networkx.DiGraph``

    >>> import pyro
    >>> from llmppl.distributions import LM, Categorical
    >>> from llmppl.models import ToyLM
    >>> lm = ToyLM(alphabet="ab")
    >>> def verifier():
    ...     claim = pyro.sample("claim", LM("ab", model=lm, max_tokens=2))
    ...     pyro.sample("ok", Categorical(["yes", "no"], probs=[0.5, 0.5]), obs="yes")
    ...     pyro.factor("len", torch.tensor(-float(len(claim))))
    >>> g = model_graph(verifier)
    >>> [g.nodes[n]["kind"] for n in g], list(g.edges)
    (['sample', 'observed', 'factor'], [('claim', 'len')])
    """
    rel = model_relations(model, model_args, model_kwargs, posterior=posterior)
    g = nx.DiGraph(plates=rel["plates"])
    for name, attrs in rel["sites"].items():
        g.add_node(name, **attrs)
    g.add_edges_from(rel["edges"])
    return g


def _label(name: str, attrs: dict, render_distributions: bool) -> str:
    lines = [f"{name} ~ {attrs['distribution']}" if render_distributions else name]
    if attrs.get("prompt") is not None:
        lines.append(_shorten(attrs["prompt"]))
    diag = []
    if "ess" in attrs:
        diag.append(f"ESS {attrs['ess']:.1f}")
    if "acceptance_rate" in attrs:
        diag.append(f"acc {attrs['acceptance_rate']:.2g}")
    if diag:
        lines.append(", ".join(diag))
    if "top_value" in attrs:
        lines.append(f"top {_shorten(str(attrs['top_value']), 24)} ({attrs['top_prob']:.2f})")
    # graphviz reads backslash escapes in labels: keep the text's own, break lines with \n
    return "\\n".join(line.replace("\\", "\\\\") for line in lines)


def _graph_spec(graph: nx.DiGraph, render_distributions: bool) -> dict:
    """The graph as plain data for drawing: nodes with graphviz attributes, plates, edges."""
    nodes = {}
    for name, attrs in graph.nodes(data=True):
        kind = attrs["kind"]
        style = ["filled"]
        if kind == "deterministic":
            style.append("dashed")
        if not attrs.get("reached", True):
            style.append("dotted")
        nodes[name] = {
            "label": _label(name, attrs, render_distributions),
            "shape": "box" if kind == "factor" else "ellipse",
            "style": ",".join(style),
            "fillcolor": "gray" if kind == "observed" else "white",
            "plate": attrs["plates"][-1] if attrs["plates"] else None,
        }
    return {"nodes": nodes, "plates": dict(graph.graph.get("plates", {})), "edges": list(graph.edges)}


def _render_spec(spec: dict):
    try:
        import graphviz
    except ImportError as err:
        raise ImportError(
            "render_model needs graphviz: pip install graphviz, and the system package "
            "(apt install graphviz, brew install graphviz or conda install graphviz)"
        ) from err
    graph = graphviz.Digraph()
    clusters = {p: graphviz.Digraph(name=f"cluster_{p}") for p in spec["plates"]}
    for p, cluster in clusters.items():
        cluster.attr(label=p, labeljust="r", labelloc="b")
    for name, node in spec["nodes"].items():
        target = clusters[node["plate"]] if node["plate"] is not None else graph
        target.node(name, label=node["label"], shape=node["shape"], style=node["style"], fillcolor=node["fillcolor"])
    # nest clusters innermost first, as pyro does
    remaining = dict(spec["plates"])
    while remaining:
        leaf = next(p for p in remaining if p not in remaining.values())
        parent = remaining.pop(leaf)
        (clusters[parent] if parent is not None else graph).subgraph(clusters[leaf])
    for a, b in spec["edges"]:
        if ":" in a or ":" in b:  # graphviz's edge() reads "a:b" as node a, port b
            graph.body.append(f"\t{_quoted(a)} -> {_quoted(b)}\n")
        else:
            graph.edge(a, b)
    return graph


def _quoted(name: str) -> str:
    """A DOT identifier in double quotes (a colon inside is then part of the name)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_model(
    model: Callable,
    model_args=(),
    model_kwargs=None,
    *,
    posterior=None,
    filename: str | os.PathLike | None = None,
    render_distributions: bool = False,
):
    """Draw the model with graphviz, like ``pyro.render_model``.

    Observed sites are shaded gray, ``pyro.factor`` sites are boxes, deterministic sites
    (string ``Delta``, ``pyro.deterministic``) dashed, sites reached only under
    intervention dotted, plates drawn as clusters. Labels show the site name, its
    shortened prompt template and, with ``posterior``, its diagnostics (see
    :func:`model_graph`). Needs the ``graphviz`` package, and the system graphviz to
    write files.

    :param model: a Pyro model function.
    :param tuple model_args: its positional arguments.
    :param dict model_kwargs: its keyword arguments.
    :param posterior: an optional :class:`~llmppl.inference.Posterior` for diagnostics.
    :param filename: write the picture here; the format is the suffix (``.svg``, ``.png``, ``.pdf``).
    :param bool render_distributions: show each site's distribution class in its label.
    :returns: ``graphviz.Digraph``

    >>> import pyro
    >>> from llmppl.distributions import Categorical
    >>> def model():
    ...     x = pyro.sample("x", Categorical(["a", "b"]))
    ...     pyro.sample("y", Categorical([x, "c"]), obs="c")
    >>> g = render_model(model)
    >>> "x -> y" in g.source, "fillcolor=gray" in g.source
    (True, True)
    """
    graph = model_graph(model, model_args, model_kwargs, posterior=posterior)
    dot = _render_spec(_graph_spec(graph, render_distributions))
    if filename is not None:
        path = Path(filename)
        fmt = path.suffix[1:].lower()
        if not fmt:
            raise ValueError(f"render_model: filename: expected a suffix such as .svg or .png, got {str(filename)!r}")
        written = dot.render(str(path.with_suffix("")), view=False, cleanup=True, format=fmt)
        if Path(written) != path:  # "graph.SVG": graphviz wrote "graph.svg"
            os.replace(written, path)
    return dot
