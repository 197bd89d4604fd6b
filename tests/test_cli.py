"""The command line: `llmppl demo` end to end at a tiny size, and its help."""

import pytest

from llmppl import cli


def test_demo_runs_end_to_end_and_writes_the_graph(tmp_path, capsys):
    assert cli.main(["demo", "--problems", "1", "--digits", "2", "--particles", "2", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for method in cli.METHODS:
        assert method in printed
    svg = (tmp_path / "verifier_graph.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "verified" in svg and "answer" in svg


def test_demo_help_reads_well(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "held-out additions" in text and "--problems" in text and "--seed" in text


def test_demo_rejects_bad_sizes():
    with pytest.raises(ValueError, match="problems"):
        cli.demo(problems=0)
