"""Posterior and Marginal: the numbers, the lookups, the displays."""

import math
import sys

import pytest
import torch

from llmppl.inference import Importance, InferenceError, Marginal, Posterior


def _post():
    values = [{"answer": "579", "n": torch.tensor(1)}, {"answer": "578", "n": torch.tensor(2)}, {"answer": "579"}]
    return Posterior(values, torch.tensor([0.0, math.log(2.0), -math.inf]), return_values=["a", "b", "c"])


def test_weights_ess_and_evidence():
    post = _post()
    assert post.weights.tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert post.ess == pytest.approx(9 / 5)
    assert post.log_evidence == pytest.approx(0.0, abs=1e-6)  # log((1 + 2 + 0) / 3)


def test_marginal_lookups():
    m = _post().marginal("answer")
    assert m["579"] == pytest.approx(1 / 3) and m.prob("578") == pytest.approx(2 / 3)
    assert m["never"] == 0.0 and "579" in m and "never" not in m
    assert m.mode() == "578" and m.top(1) == [("578", pytest.approx(2 / 3))]
    assert list(m.keys()) == ["578", "579"] and len(m) == 2
    assert sum(m.probs.values()) == pytest.approx(1.0)
    # tensor values become numbers; particles without the site are left out
    assert _post().marginal("n").probs == {2: pytest.approx(2 / 3), 1: pytest.approx(1 / 3)}
    assert _post().marginal().mode() == "b"
    with pytest.raises(KeyError, match="'nope'"):
        _post().marginal("nope")


def test_sample_draws_by_weight():
    post = _post()
    torch.manual_seed(0)
    draws = [post.sample() for _ in range(600)]
    assert "c" not in draws
    assert abs(draws.count("b") / 600 - 2 / 3) < 0.07


def test_zero_weight_everywhere():
    post = Posterior([{"x": "a"}], torch.tensor([-math.inf]))
    assert post.ess == 0.0 and post.log_evidence == -math.inf
    with pytest.raises(InferenceError):
        post.sample()
    with pytest.raises(InferenceError):
        post.marginal("x")


def test_posterior_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        Posterior([{}], torch.tensor([math.nan]))


def test_html_and_repr(cascade):
    post = Importance(cascade, num_samples=16, progress=False).run()
    page = post._repr_html_()
    assert "<table>" in page and "work" in page and "answer" in page and "ess" in page
    bars = post.marginal("answer")._repr_html_()
    assert bars.count("<tr>") == len(post.marginal("answer")) + 1 and "width:" in bars
    assert repr(post).startswith("Posterior(Importance, num_particles=16")
    assert repr(Marginal({"a": 1.0}, site="x")) == "Marginal('x', {'a': 1})"


def test_marginal_rejects_empty_mass():
    with pytest.raises(ValueError, match="positive finite total"):
        Marginal({"a": 0.0})


def test_plot_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        _post().plot("answer")


def test_marginal_html_shortens_long_values_and_counts_the_rest():
    long = "1+5=6 c0; " * 20 + "<b>"
    m = Marginal({long: 5.0, **{str(i): 1.0 for i in range(12)}}, site="work")
    page = m._repr_html_(max_rows=3)
    assert "<b>work</b>" in page and "13 distinct values" in page
    assert '<b>"' not in page and "&lt;b&gt;" in page  # values are escaped
    assert "…" in page and "title=" in page  # the long value is cut, its full repr is the tooltip
    assert "… 10 more values (58.8% together)" in page  # 10 of 17 units of mass are not shown
    assert page.count("<tr>") == 1 + 3 + 1
    # a bar's width is the probability: 5/17 of the mass for the first row
    assert f"width:{100 * 5 / 17:.1f}%" in page


def test_posterior_html_sites_kinds_and_return_value(cascade):
    post = Importance(cascade, num_samples=16, progress=False).run()
    page = post._repr_html_()
    for text in ("Importance", "num_particles", "ess", "log_evidence", "rounds", "return value", "observed", "latent"):
        assert text in page, text
    # one row per site plus the return value, plus the header
    sites_table = page.split("<table>")[2]
    assert sites_table.count("<tr>") == 1 + len(post.site_names()) + 1


def test_posterior_html_when_every_weight_is_zero():
    page = Posterior([{"x": "a"}], torch.tensor([-math.inf]))._repr_html_()
    assert "every particle has zero weight" in page and "ess" in page


def test_posterior_html_lists_at_most_max_sites():
    post = Posterior([{f"s{i}": "v" for i in range(5)}], torch.zeros(1))
    page = post._repr_html_(max_sites=2)
    assert "s1" in page and "s2" not in page and "3 more sites" in page


def test_tuple_and_dict_returns_with_tensors_are_merged():
    import pyro
    import pyro.distributions as dist

    from llmppl.distributions import LM
    from llmppl.models import ToyLM

    lm = ToyLM(alphabet="ab")

    def model():
        z = pyro.sample("z", dist.Bernoulli(0.5))
        x = pyro.sample("x", LM("", model=lm, max_tokens=1))
        return (x, z)

    pyro.set_rng_seed(0)
    m = Importance(model, num_samples=200, progress=False).run().marginal()
    assert len(m) <= 6  # x in {"", "a", "b"}, z in {0, 1}
    x, z = m.mode()
    assert isinstance(x, str) and z in (0.0, 1.0)

    def as_dict():
        x, z = model()
        return {"x": x, "z": z}

    pyro.set_rng_seed(0)
    m = Importance(as_dict, num_samples=200, progress=False).run().marginal()
    assert len(m) <= 6 and isinstance(m.mode(), dict) and set(m.mode()) == {"x", "z"}
