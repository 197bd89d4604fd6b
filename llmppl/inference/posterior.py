"""Results of inference: :class:`Posterior` (weighted particles) and :class:`Marginal` (one site).

>>> import torch
>>> post = Posterior([{"x": "a"}, {"x": "b"}], torch.tensor([0.0, -1.0]), return_values=["a", "b"])
>>> m = post.marginal("x")
>>> round(m["a"], 3), m.mode()
(0.731, 'a')
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["InferenceError", "Marginal", "Posterior"]


class InferenceError(RuntimeError):
    """Inference could not produce a weighted sample (e.g. every particle has zero weight).

    ``site`` names the site where the last particles died (``None`` when unknown).

    >>> InferenceError("every particle has zero weight", site="answer").site
    'answer'
    """

    def __init__(self, message: str, *, site: str | None = None):
        super().__init__(message)
        self.site = site


class _FrozenDict(dict):
    """A dict that can be a key (a model returning a dict): equal dicts are one value."""

    def __hash__(self):
        return hash(frozenset(self.items()))


def _hashable(value):
    """Site and return values as dictionary keys: strings as they are, scalar tensors as
    numbers, tuples and lists (also of tensors) as tuples, dicts as hashable dicts.

    >>> _hashable((torch.tensor(1.0), ["a", torch.tensor([1, 2])]))
    (1.0, ('a', (1, 2)))
    """
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else tuple(value.reshape(-1).tolist())
    if isinstance(value, (tuple, list)):
        items = [_hashable(v) for v in value]
        return type(value)._make(items) if hasattr(type(value), "_make") else tuple(items)
    if isinstance(value, dict):
        return _FrozenDict({_hashable(k): _hashable(v) for k, v in value.items()})
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def _logsumexp(lw: torch.Tensor) -> float:
    return float(torch.logsumexp(lw, 0)) if lw.numel() else float("-inf")


class Marginal:
    """A discrete distribution over the values of one site: value -> probability.

    Values are listed most probable first. ``m[value]`` and ``m.prob(value)`` give the
    probability of a value (``0.0`` for a value never seen).

    :param dict probs: value -> probability (normalised here; values with zero mass dropped).
    :param str site: the site's name, for display.

    >>> m = Marginal({"579": 3.0, "578": 1.0}, site="answer")
    >>> m.top(1), m["579"], m.prob("nope"), len(m)
    ([('579', 0.75)], 0.75, 0.0, 2)
    """

    def __init__(self, probs: dict, *, site: str | None = None):
        total = float(sum(probs.values()))
        if not total > 0 or not math.isfinite(total):
            raise ValueError(f"Marginal: probs: expected a positive finite total mass, got {total}")
        items = sorted(((k, float(v) / total) for k, v in probs.items() if v > 0), key=lambda kv: -kv[1])
        self._probs = dict(items)
        self.site = site

    @property
    def probs(self) -> dict:
        """value -> probability, most probable first (a copy).

        >>> Marginal({"a": 1.0}).probs
        {'a': 1.0}
        """
        return dict(self._probs)

    def items(self):
        """``(value, probability)`` pairs, most probable first.

        >>> list(Marginal({"a": 1.0, "b": 3.0}).items())
        [('b', 0.75), ('a', 0.25)]
        """
        return self._probs.items()

    def keys(self):
        """The values, most probable first.

        >>> list(Marginal({"a": 1.0}).keys())
        ['a']
        """
        return self._probs.keys()

    def top(self, k: int = 5) -> list[tuple[Any, float]]:
        """The ``k`` most probable ``(value, probability)`` pairs.

        >>> Marginal({"a": 1.0, "b": 3.0, "c": 2.0}).top(2)
        [('b', 0.5), ('c', 0.3333333333333333)]
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"top: k: expected an int >= 0, got {k!r}")
        return list(self._probs.items())[:k]

    def mode(self):
        """The most probable value.

        >>> Marginal({"a": 1.0, "b": 3.0}).mode()
        'b'
        """
        return next(iter(self._probs))

    def prob(self, value) -> float:
        """The probability of ``value`` (``0.0`` if it never occurred).

        >>> Marginal({"a": 1.0}).prob("a")
        1.0
        """
        return self._probs.get(_hashable(value), 0.0)

    __getitem__ = prob

    def __contains__(self, value) -> bool:
        return _hashable(value) in self._probs

    def __iter__(self):
        return iter(self._probs)

    def __len__(self) -> int:
        return len(self._probs)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k!r}: {p:.3g}" for k, p in self.top(5))
        more = f", … ({len(self) - 5} more)" if len(self) > 5 else ""
        name = f"{self.site!r}, " if self.site else ""
        return f"Marginal({name}{{{shown}{more}}})"

    def _repr_html_(self, max_rows: int = 10) -> str:
        """An HTML table of the most probable values, with probability bars (Jupyter).

        Long values are shortened (the full value is the cell's tooltip); whitespace and
        newlines show as in ``repr``. A bar's full width is probability 1.

        >>> page = Marginal({"579": 3.0, "578": 1.0}, site="answer")._repr_html_()
        >>> "answer" in page and "75.0%" in page and page.count("<tr>") == 3
        True
        """
        top = self.top(max_rows)
        rows = "".join(
            "<tr>"
            f"<td style='text-align:left'>{_value_cell(value)}</td>"
            f"<td style='text-align:right'>{_percent(p)}</td>"
            f"<td style='width:14em;text-align:left'>{_bar(p)}</td>"
            "</tr>"
            for value, p in top
        )
        if len(self) > max_rows:
            rest = 1.0 - sum(p for _, p in top)
            rows += (
                f"<tr><td colspan=3 style='text-align:left;color:#666'>… {len(self) - max_rows} more values "
                f"({_percent(rest)} together)</td></tr>"
            )
        title = f"<b>{html.escape(str(self.site))}</b>: " if self.site else ""
        noun = "value" if len(self) == 1 else "values"
        return (
            f"<div class='llmppl-marginal'>{title}marginal over {len(self)} distinct {noun}"
            f"<table>{_header('value', 'probability', '')}{rows}</table></div>"
        )


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _value_cell(value, limit: int = 60) -> str:
    """A value as ``<code>``: its ``repr`` (whitespace visible), shortened, the full text as a tooltip."""
    text = repr(value)
    shown = html.escape(_shorten(text, limit))
    tip = f" title='{html.escape(text, quote=True)}'" if len(text) > limit else ""
    return f"<code style='white-space:pre'{tip}>{shown}</code>"


def _percent(p: float) -> str:
    return f"{100 * p:.1f}%" if p >= 0.001 else f"{100 * p:.2g}%"


def _bar(fraction: float, color: str = "#4c72b0") -> str:
    width = 100 * min(max(fraction, 0.0), 1.0)
    return f"<div style='background:{color};height:0.8em;width:{width:.1f}%'></div>"


def _header(*names: str) -> str:
    return "<tr>" + "".join(f"<th style='text-align:left'>{html.escape(n)}</th>" for n in names) + "</tr>"


_SUMMARY_NOTES = {
    "ess": "effective sample size",
    "log_evidence": "log of the estimated marginal likelihood",
    "rounds": "engine rounds",
    "resamples": "resampling steps between sites",
    "token_resamples": "resampling steps inside steered sites",
    "acceptance_rate": "accepted runs / attempts",
}


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


class Posterior:
    """Weighted particles from an inference run.

    ``log_evidence`` is the log of the run's estimate of the marginal likelihood (its
    exponential is unbiased); ``ess`` the effective sample size of ``log_weights``.

    :param list values: per particle, site name -> value (latent and observed sites).
    :param log_weights: ``Tensor[N]`` float64, ``-inf`` for zero weight.
    :param list return_values: per particle, the program's return value.
    :param float log_evidence: default: the log of the mean weight.
    :param list sites: per particle, the :class:`~llmppl.inference.messenger.SiteRecord` list
        of its last run (for :attr:`traces`).
    :param dict diagnostics: extra numbers shown in the summary (e.g. ``acceptance_rate``).

    >>> import torch
    >>> post = Posterior([{"x": "a"}] * 2, torch.zeros(2), return_values=[1, 2])
    >>> post.ess, post.num_particles, post.log_evidence
    (2.0, 2, 0.0)
    """

    def __init__(
        self,
        values: Sequence[dict],
        log_weights,
        *,
        return_values: Sequence | None = None,
        log_evidence: float | None = None,
        sites: Sequence[list] | None = None,
        algorithm: str = "",
        diagnostics: dict | None = None,
    ):
        self.values = list(values)
        lw = torch.as_tensor(log_weights, dtype=torch.float64).reshape(-1).clone()
        if lw.shape[0] != len(self.values):
            raise ValueError(f"log_weights: expected {len(self.values)} entries, got {lw.shape[0]}")
        if torch.isnan(lw).any():
            raise ValueError("log_weights: expected no NaN")
        self.log_weights = lw
        self.return_values = list(return_values) if return_values is not None else [None] * len(self.values)
        n = max(len(self.values), 1)
        self.log_evidence = float(_logsumexp(lw) - math.log(n)) if log_evidence is None else float(log_evidence)
        self._sites = list(sites) if sites is not None else None
        self._traces = None
        self.algorithm = algorithm
        self.diagnostics = dict(diagnostics or {})

    @property
    def num_particles(self) -> int:
        """The number of particles (or accepted samples).

        >>> Posterior([{}], torch.zeros(1)).num_particles
        1
        """
        return len(self.values)

    @property
    def weights(self) -> torch.Tensor:
        """Normalised weights, ``Tensor[N]`` float64 (zeros when every weight is zero).

        >>> Posterior([{}, {}], torch.tensor([0.0, float("-inf")])).weights.tolist()
        [1.0, 0.0]
        """
        if not bool(torch.isfinite(self.log_weights).any()):
            return torch.zeros_like(self.log_weights)
        return torch.softmax(self.log_weights, 0)

    @property
    def ess(self) -> float:
        r"""Effective sample size :math:`(\sum w)^2 / \sum w^2` (``0.0`` when every weight is zero).

        >>> Posterior([{}, {}], torch.tensor([0.0, float("-inf")])).ess
        1.0
        """
        lw = self.log_weights
        if not bool(torch.isfinite(lw).any()):
            return 0.0
        return float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)))

    @property
    def traces(self) -> list:
        """One ``pyro.poutine.Trace`` per particle (its last run; LM sites keep their ``LM``).

        >>> Posterior([{}], torch.zeros(1)).traces[0].nodes["_RETURN"]["value"] is None
        True
        """
        if self._traces is None:
            from pyro.poutine import Trace

            traces = []
            for i in range(self.num_particles):
                tr = Trace()
                for s in self._sites[i] if self._sites is not None else ():
                    tr.add_node(
                        s.name,
                        type="sample",
                        name=s.name,
                        fn=s.fn,
                        value=s.value,
                        is_observed=s.is_observed,
                        scale=s.scale,
                        mask=s.mask,
                        cond_indep_stack=s.cond_indep_stack,
                        args=(),
                        kwargs={},
                        infer={},
                        done=True,
                        stop=False,
                        continuation=None,
                    )
                tr.add_node("_RETURN", name="_RETURN", type="return", value=self.return_values[i])
                traces.append(tr)
            self._traces = traces
        return self._traces

    def site_names(self) -> list[str]:
        """Every site name seen in any particle, in first-seen order.

        >>> Posterior([{"a": 1}, {"b": 2}], torch.zeros(2)).site_names()
        ['a', 'b']
        """
        return list(dict.fromkeys(k for v in self.values for k in v))

    def marginal(self, site: str = "_RETURN") -> Marginal:
        """The weighted distribution of one site's value (``"_RETURN"``: the return value).

        Particles that never reached ``site`` (control flow) are left out and the rest
        renormalised.

        >>> post = Posterior([{"x": "a"}, {"x": "b"}, {"x": "a"}], torch.zeros(3))
        >>> post.marginal("x").probs
        {'a': 0.6666666666666666, 'b': 0.3333333333333333}
        """
        if site == "_RETURN":
            pairs = list(zip(self.return_values, self.log_weights.tolist(), strict=True))
        else:
            pairs = [(v[site], lw) for v, lw in zip(self.values, self.log_weights.tolist(), strict=True) if site in v]
            if not pairs:
                raise KeyError(f"marginal: site {site!r} was not reached by any particle; sites: {self.site_names()}")
        lws = torch.tensor([lw for _, lw in pairs], dtype=torch.float64)
        if not bool(torch.isfinite(lws).any()):
            raise InferenceError(f"marginal: every particle that reached site {site!r} has zero weight", site=site)
        w = torch.softmax(lws, 0).tolist()
        probs: dict = {}
        for (value, _), wi in zip(pairs, w, strict=True):
            key = _hashable(value)
            probs[key] = probs.get(key, 0.0) + wi
        return Marginal(probs, site=site)

    def sample(self):
        """One particle's return value, drawn by weight (torch's RNG).

        >>> Posterior([{}, {}], torch.tensor([float("-inf"), 0.0]), return_values=["no", "yes"]).sample()
        'yes'
        """
        w = self.weights
        if not bool((w > 0).any()):
            raise InferenceError("sample: every particle has zero weight")
        return self.return_values[int(torch.multinomial(w, 1))]

    def plot(self, site: str | None = None, *, top: int = 10):
        """Bars of ``site``'s marginal (default: the return value) and a histogram of the weights.

        Needs matplotlib (``pip install matplotlib``); returns the figure.

        >>> callable(Posterior.plot)
        True
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as err:
            raise ImportError("Posterior.plot needs matplotlib: pip install matplotlib") from err
        fig, (ax_m, ax_w) = plt.subplots(1, 2, figsize=(10, 3.5))
        m = self.marginal(site or "_RETURN")
        pairs = m.top(top)
        labels = [repr(k) if len(repr(k)) <= 24 else repr(k)[:23] + "…" for k, _ in pairs]
        ax_m.barh(range(len(pairs)), [p for _, p in pairs], color="#4c72b0")
        ax_m.set_yticks(range(len(pairs)), labels)
        ax_m.invert_yaxis()
        ax_m.set_xlabel("probability")
        ax_m.set_title(f"marginal of {site or 'return value'}")
        w = self.weights
        ax_w.hist(w[w > 0].numpy(), bins=30, color="#55a868")
        ax_w.set_xlabel("normalised weight")
        ax_w.set_title(f"weights (ESS {self.ess:.1f} of {self.num_particles})")
        fig.tight_layout()
        return fig

    def summary(self) -> dict:
        """The numbers shown by ``repr`` and in Jupyter.

        >>> sorted(Posterior([{}], torch.zeros(1)).summary())
        ['ess', 'log_evidence', 'num_particles']
        """
        out = {"num_particles": self.num_particles, "ess": self.ess, "log_evidence": self.log_evidence}
        out.update(self.diagnostics)
        return out

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.summary().items())
        return f"Posterior({self.algorithm + ', ' if self.algorithm else ''}{parts})"

    def _site_kinds(self) -> dict[str, str]:
        """Site name -> ``"observed"``/``"latent"``, from the recorded sites (empty without them)."""
        kinds: dict[str, str] = {}
        for records in self._sites or ():
            for s in records:
                kinds.setdefault(s.name, "observed" if s.is_observed else "latent")
        return kinds

    def _repr_html_(self, max_sites: int = 20) -> str:
        """A summary table, then every site's most probable value with its probability (Jupyter).

        >>> page = Posterior([{"x": "a"}, {"x": "b"}], torch.tensor([0.0, -1.0]))._repr_html_()
        >>> "ess" in page and "73.1%" in page and "&#x27;a&#x27;" in page
        True
        """
        summary = self.summary()
        n, ess = summary["num_particles"], summary["ess"]
        shown = {"ess": f"{ess:.4g} ({_percent(ess / n) if n else '–'} of {n})"}
        table = "".join(
            f"<tr><td style='text-align:left'><code>{html.escape(k)}</code></td>"
            f"<td style='text-align:left'>{shown.get(k) or _number(v)}</td>"
            f"<td style='text-align:left;color:#666'>{_SUMMARY_NOTES.get(k, '')}</td></tr>"
            for k, v in summary.items()
        )
        names = self.site_names()
        if any(r is not None for r in self.return_values):
            names.append("_RETURN")
        kinds = self._site_kinds()
        if ess > 0:
            site_rows = []
            for name in names[:max_sites]:
                try:
                    m = self.marginal(name)
                except InferenceError:  # only zero-weight particles reached this site
                    continue
                value, p = m.top(1)[0]
                label = "return value" if name == "_RETURN" else name
                kind = kinds.get(name, "")
                site_rows.append(
                    f"<tr><td style='text-align:left'>{html.escape(label)}</td>"
                    f"<td style='text-align:left;color:#666'>{kind}</td>"
                    f"<td style='text-align:left'>{_value_cell(value, 48)}</td>"
                    f"<td style='text-align:right'>{_percent(p)}</td>"
                    f"<td style='width:8em;text-align:left'>{_bar(p)}</td>"
                    f"<td style='text-align:right'>{len(m)}</td></tr>"
                )
            if len(names) > max_sites:
                site_rows.append(
                    f"<tr><td colspan=6 style='text-align:left;color:#666'>… {len(names) - max_sites} more sites "
                    "(<code>post.marginal(name)</code>)</td></tr>"
                )
            sites = (
                f"<table>{_header('site', '', 'most probable value', 'probability', '', 'distinct')}"
                + "".join(site_rows)
                + "</table>"
            )
        else:
            sites = "<p style='color:#b00'>every particle has zero weight: no marginals</p>"
        title = html.escape(self.algorithm or "Posterior")
        return f"<div class='llmppl-posterior'><b>{title}</b><table>{table}</table>{sites}</div>"
