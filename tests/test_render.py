"""Model graphs by intervention: the relations, not the pictures."""

import math
import re
import shutil

import pyro
import pytest
import torch

from llmppl.distributions import LM, Categorical, Delta
from llmppl.inference import Importance, Posterior, Rejection
from llmppl.models import ToyLM
from llmppl.render import model_graph, model_relations, render_model


class CountingLM(ToyLM):
    """A ToyLM that counts the sequence-tier calls made on it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = {"sample": 0, "score": 0}

    def sample(self, *args, **kwargs):
        self.calls["sample"] += 1
        return super().sample(*args, **kwargs)

    def score(self, *args, **kwargs):
        self.calls["score"] += 1
        return super().score(*args, **kwargs)


@pytest.fixture
def lm():
    return CountingLM(alphabet="ab")


def _lm(prompt, lm, n=3):
    return LM(prompt, model=lm, max_tokens=n)


def edges(model, *args, **kwargs):
    return sorted(model_graph(model, args, **kwargs).edges)


@pytest.mark.parametrize(
    "build",
    [
        lambda q, w: f"{q}b{w}a",
        lambda q, w: q + w + "b",
        lambda q, w: "".join([q, w, "a"]),
        lambda q, w: re.sub("Z", w, q + "Z"),
        lambda q, w: "{}b{}".format(q, w),  # noqa: UP032 -- .format is what is tested
    ],
    ids=["fstring", "plus", "join", "re.sub", "format"],
)
def test_string_operations_give_an_edge(lm, build):
    def model(q):
        w = pyro.sample("work", _lm(q, lm))
        pyro.sample("answer", _lm(build(q, w), lm))

    g = model_graph(model, ("ab",))
    assert list(g.edges) == [("work", "answer")]
    assert "{work}" in g.nodes["answer"]["prompt"]
    assert g.nodes["work"]["prompt"] == "ab"


def test_print_only_use_adds_no_edge(lm, capsys):
    def model():
        w = pyro.sample("work", _lm("a", lm))
        print("work was", w)
        pyro.sample("answer", _lm("ab", lm))

    assert edges(model) == []
    assert capsys.readouterr().out.count("work was") == 1  # the intervention runs are silent


def test_if_on_a_sampled_value_gives_an_edge_to_a_child_on_one_branch(lm):
    def model(choice):
        c = pyro.sample("c", Categorical(["yes", "no"], probs=[0.5, 0.5]))
        if c == choice:
            pyro.sample("only_if", _lm("ab", lm))
        pyro.sample("always", _lm("b", lm))

    # whichever branch the reference run took, the other one is found by intervention
    for choice in ("yes", "no"):
        g = model_graph(model, (choice,))
        assert set(g.edges) == {("c", "only_if")}
        assert set(g.nodes) == {"c", "only_if", "always"}
        assert list(g.nodes).index("only_if") < list(g.nodes).index("always")


def test_if_on_an_lm_value_is_found(lm):
    def model():
        w = pyro.sample("w", _lm("ab", lm))
        if w:  # empty or not
            pyro.sample("more", _lm("a", lm))

    assert edges(model) == [("w", "more")]


def test_posterior_values_probe_control_flow(lm):
    def model():
        w = pyro.sample("w", _lm("ab", lm))
        if w == "ab":
            pyro.sample("child", _lm("a", lm))

    # the reference is the best particle ("b"); only trying "ab", seen in another particle, finds the branch
    post = Posterior([{"w": "b"}, {"w": "ab", "child": "a"}], torch.tensor([0.0, -1.0]))
    g = model_graph(model, posterior=post)
    assert list(g.edges) == [("w", "child")]
    assert g.nodes["child"]["reached"] is False and g.nodes["w"]["reached"] is True
    assert g.nodes["w"]["top_value"] == "b"
    assert "dotted" in render_model(model, posterior=post).source
    assert lm.calls == {"sample": 0, "score": 0}


def test_chain_gives_direct_edges_only(lm):
    def model(q):
        a = pyro.sample("a", _lm(q, lm))
        b = pyro.sample("b", _lm(q + a, lm))
        pyro.sample("c", _lm(b + "a", lm))

    g = model_graph(model, ("ab",))
    assert sorted(g.edges) == [("a", "b"), ("b", "c")]
    assert g.nodes["b"]["prompt"] == "ab{a}"
    assert g.nodes["c"]["prompt"] == "{b}a"


def test_grandchild_using_both_gets_both_edges(lm):
    def model():
        a = pyro.sample("a", _lm("a", lm))
        b = pyro.sample("b", _lm(a, lm))
        pyro.sample("c", _lm(a + b, lm))

    assert edges(model) == [("a", "b"), ("a", "c"), ("b", "c")]


def test_kinds_and_deterministic_dependencies(lm):
    def tool(expr):  # a strict calculator: raises on anything but "d+d"
        a, b = expr.split("+")
        return str(int(a) + int(b))

    def model():
        expr = pyro.sample("expr", Categorical(["1+2", "3+4"]))
        result = pyro.sample("result", Delta(tool(expr)))
        pyro.deterministic("doubled", torch.tensor(float(result)) * 2)
        ans = pyro.sample("answer", _lm("ab", lm), obs="ab")
        pyro.factor("check", torch.tensor(float(result) - len(ans)))

    g = model_graph(model)
    kinds = {n: g.nodes[n]["kind"] for n in g}
    assert kinds == {
        "expr": "sample",
        "result": "deterministic",
        "doubled": "deterministic",
        "answer": "observed",
        "check": "factor",
    }
    # the tool parses digits: the marker is rejected, the shape-preserving probe is not
    assert sorted(g.edges) == [("answer", "check"), ("expr", "result"), ("result", "check"), ("result", "doubled")]
    assert g.nodes["result"]["distribution"] == "Delta"
    assert g.nodes["doubled"]["prompt"] is None


def test_tensor_sites(lm):
    def model():
        x = pyro.sample("x", pyro.distributions.Normal(0.0, 1.0))
        pyro.sample("y", pyro.distributions.Normal(x, 1.0))
        pyro.sample("z", pyro.distributions.Normal(0.0, 1.0))

    assert edges(model) == [("x", "y")]


def test_plates(lm):
    def model():
        q = pyro.sample("q", _lm("a", lm))
        with pyro.plate("samples", 3):
            pyro.sample("thought", _lm(q + "b", lm))
        for i in pyro.plate("steps", 2):
            pyro.sample(f"step_{i}", _lm("ab", lm))

    g = model_graph(model)
    assert g.nodes["thought"]["plates"] == ("samples",)
    assert g.nodes["step_1"]["plates"] == ("steps",)
    assert g.nodes["q"]["plates"] == ()
    assert sorted(g.edges) == [("q", "thought")]
    assert g.graph["plates"] == {"samples": None, "steps": None}
    src = render_model(model).source
    assert "subgraph cluster_samples" in src and "subgraph cluster_steps" in src


def test_nested_plates_are_nested_clusters():
    def model():
        with pyro.plate("outer", 2, dim=-2), pyro.plate("inner", 3, dim=-1):
            pyro.sample("x", pyro.distributions.Normal(0.0, 1.0))

    g = model_graph(model)
    assert g.nodes["x"]["plates"] == ("outer", "inner")
    assert g.graph["plates"] == {"outer": None, "inner": "outer"}
    src = render_model(model).source
    assert src.index("cluster_outer") < src.index("cluster_inner")


def test_no_lm_call_during_interventions(lm):
    def model(q):
        a = pyro.sample("a", _lm(q, lm))
        if a:
            pyro.sample("b", _lm(q + a, lm))
        pyro.sample("c", _lm("b", lm), obs="ab")

    pyro.set_rng_seed(1)
    pyro.poutine.trace(model).get_trace("ab")
    one_run = dict(lm.calls)
    lm.calls.update(sample=0, score=0)
    pyro.set_rng_seed(1)
    model_graph(model, ("ab",))
    assert lm.calls == one_run  # the reference run only: one draw per latent site, nothing scored
    assert lm.calls["score"] == 0


def test_with_posterior_no_lm_call_and_diagnostics(lm):
    def model():
        w = pyro.sample("work", _lm("ab", lm, 2))
        pyro.sample("answer", _lm("a" + w, lm, 2), obs="a")

    post = Importance(model, num_samples=16, progress=False).run()
    lm.calls.update(sample=0, score=0)
    g = model_graph(model, posterior=post)
    assert lm.calls == {"sample": 0, "score": 0}
    assert list(g.edges) == [("work", "answer")]
    work = g.nodes["work"]
    assert work["ess"] == pytest.approx(post.ess)
    value, prob = post.marginal("work").top(1)[0]
    assert (work["top_value"], work["top_prob"]) == (value, pytest.approx(prob))
    assert "top_value" not in g.nodes["answer"]
    assert "acceptance_rate" not in work
    src = render_model(model, posterior=post).source
    assert "ESS" in src and f"{prob:.2f}" in src


def test_rejection_posterior_gives_acceptance_rate(lm):
    def model():
        pyro.sample("c", Categorical(["a", "b"]))
        pyro.sample("ok", Categorical(["a", "b"]), obs="a")

    post = Rejection(model, num_samples=4, max_attempts=1000, progress=False).run()
    g = model_graph(model, posterior=post)
    assert g.nodes["c"]["acceptance_rate"] == pytest.approx(post.diagnostics["acceptance_rate"])
    assert "acc " in render_model(model, posterior=post).source


def test_render_styles(lm):
    def model():
        c = pyro.sample("c", Categorical(["a", "b"]))
        d = pyro.sample("d", Delta(c + "a"))
        pyro.sample("o", _lm(d, lm), obs="b")
        pyro.factor("f", torch.tensor(0.0))

    src = render_model(model, render_distributions=True).source
    lines = {n: next(line for line in src.splitlines() if line.strip().startswith(n + " ")) for n in "cdof"}
    assert "fillcolor=gray" in lines["o"] and "fillcolor=white" in lines["c"]
    assert "dashed" in lines["d"] and "dashed" not in lines["c"]
    assert "shape=box" in lines["f"] and "shape=ellipse" in lines["c"]
    assert "o ~ LM" in lines["o"] and "{d}" in lines["o"]
    assert "d -> o" in src and "c -> d" in src


def test_filename_writes_svg(lm, tmp_path):
    def model():
        w = pyro.sample("w", _lm("a", lm))
        pyro.sample("x", _lm(w, lm))

    path = tmp_path / "graph.svg"
    render_model(model, filename=path)
    assert path.read_text().lstrip().startswith("<?xml") and "<svg" in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph.svg"]


def test_bad_arguments():
    with pytest.raises(TypeError, match="model"):
        model_graph("not a model")
    with pytest.raises(TypeError, match="model_args"):
        model_graph(lambda: None, model_args="x")
    with pytest.raises(ValueError, match="suffix"):
        render_model(lambda: None, filename="graph")


def test_relations_are_plain_data(lm):
    def model():
        pyro.sample("w", _lm("a", lm))

    rel = model_relations(model)
    assert rel == {
        "sites": {
            "w": {"kind": "sample", "distribution": "LM", "prompt": "a", "plates": (), "reached": True},
        },
        "edges": [],
        "plates": {},
    }


def test_graphviz_is_imported_lazily_with_an_install_hint(monkeypatch):
    import sys

    def model():
        pyro.sample("x", Categorical(["a", "b"]))

    monkeypatch.setitem(sys.modules, "graphviz", None)
    assert list(model_graph(model)) == ["x"]  # the relations need no graphviz
    with pytest.raises(ImportError, match="pip install graphviz"):
        render_model(model)


def test_a_site_whose_every_probe_is_rejected_links_to_all_later_sites(lm):
    def model():
        key = pyro.sample("key", Delta("7"))
        if key != "7":
            raise ValueError("bad key")
        pyro.sample("later", _lm("a", lm))

    # nothing is known about what "later" would do with another key: be conservative
    assert edges(model) == [("key", "later")]


def test_a_steered_site_is_drawn_unsteered(lm):
    def steered():
        a = pyro.sample("a", LM("a", model=lm, max_tokens=3, potential=lambda s: 0.0 if "b" not in s else -math.inf))
        pyro.sample("b", LM(a, model=lm, max_tokens=3))

    g = model_graph(steered)
    assert set(g.edges) == {("a", "b")}


@pytest.mark.parametrize(
    "test",
    [
        lambda w: w == "zzz",
        lambda w: w in ("zzz", "yyy"),
        lambda w: "zzz" in w,
        lambda w: w.startswith("zz"),
        lambda w: w.endswith("zz"),
        lambda w: w.strip().lower() == "zzz",
        lambda w: len(w) > 3,
    ],
    ids=["==", "in tuple", "contains", "startswith", "endswith", "strip.lower ==", "len"],
)
def test_if_on_a_string_the_reference_never_equals_is_found(test):
    # "z" is not in the alphabet: no sampled value passes the test, and no generic probe
    # (marker, same shape changed, empty) does either; the compared-with string does
    lm = CountingLM(alphabet="ab")

    def model():
        w = pyro.sample("w", _lm("a", lm))
        if test(w):
            pyro.sample("child", _lm("b", lm))
        pyro.sample("after", _lm("a", lm))

    for seed in range(3):
        pyro.set_rng_seed(seed)
        g = model_graph(model)
        assert sorted(g.edges) == [("w", "child")], seed
        assert g.nodes["child"]["reached"] is False


def test_if_on_integer_and_real_sites_is_found(lm):
    def model():
        c = pyro.sample("c", pyro.distributions.Categorical(torch.ones(5)))
        x = pyro.sample("x", pyro.distributions.Normal(0.0, 1.0))
        pyro.sample("y", _lm("a" if int(c) == 3 else "b", lm))
        pyro.sample("z", _lm("a" if float(x) > 0 else "b", lm))

    for seed in range(4):
        pyro.set_rng_seed(seed)
        assert edges(model) == [("c", "y"), ("x", "z")], seed


def test_randomness_in_the_program_is_not_a_dependency(lm):
    import random

    shots = ["ab", "ba", "aa", "bb"]

    def model():
        pyro.sample("x", _lm("a", lm))
        shot = random.choice(shots)  # independent of x
        noise = torch.randn(())
        pyro.sample("y", _lm(shot + "a", lm))
        pyro.sample("z", pyro.distributions.Normal(noise, 1.0))

    for seed in range(5):
        pyro.set_rng_seed(seed)
        before = random.getstate()
        assert edges(model) == [], seed
        random.setstate(before)


def test_a_site_named_after_a_value_is_one_node(lm):
    def model():
        x = pyro.sample("x", _lm("a", lm, 2))
        pyro.sample(f"y_{x}", _lm("b", lm))

    pyro.set_rng_seed(0)
    g = model_graph(model)
    assert len(g.nodes) == 2 and len(g.edges) == 1
    assert not any("\u27e6" in n for n in g.nodes)


def test_templates_show_transformed_and_cut_values_by_name():
    lm = CountingLM(alphabet="abQAB ")

    def model():
        x = pyro.sample("x", _lm("a", lm))
        pyro.sample("up", _lm("Q " + x.upper(), lm))
        pyro.sample("cut", _lm("Q " + x[:2], lm))
        prev = x
        for i in range(2):
            prev = pyro.sample(f"s{i}", _lm(prev[-1:] + "b", lm))

    g = model_graph(model)
    assert g.nodes["up"]["prompt"] == "Q {x}"
    assert g.nodes["cut"]["prompt"] == "Q {x\u2026}"
    assert g.nodes["s0"]["prompt"] == "{x\u2026}b" and g.nodes["s1"]["prompt"] == "{s0\u2026}b"
    assert not any("\u27e6" in (g.nodes[n]["prompt"] or "") or "\u27e7" in (g.nodes[n]["prompt"] or "") for n in g)


def test_render_names_with_a_colon(lm, tmp_path):
    def model():
        x = pyro.sample("a:b", _lm("a", lm))
        pyro.sample("c d", _lm("b" + x, lm))

    dot = render_model(model, filename=tmp_path / "g.SVG")
    assert '"a:b" -> "c d"' in dot.source
    assert (tmp_path / "g.SVG").exists()
    if shutil.which("dot"):
        svg = (tmp_path / "g.SVG").read_text()
        assert svg.count('class="node"') == 2  # no stray node "a" from a port
