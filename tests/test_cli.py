"""The command line: `llmppl demo` end to end at a tiny size, and its help."""

import pytest

from llmppl import cli


def test_demo_runs_end_to_end_and_writes_the_graph(tmp_path, capsys):
    assert cli.main(["demo", "--problems", "1", "--digits", "2", "--particles", "2", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "1 problem per row" in printed
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


def test_star_runs_iterations_and_saves_a_loadable_model(tmp_path, capsys):
    from llmppl.models import PerformerConfig, PerformerLM, load_pretrained

    init, out = tmp_path / "init", tmp_path / "star"
    PerformerLM(PerformerConfig.tiny()).save_pretrained(init)
    argv = ["star", "--init", str(init), "--out", str(out), "--iterations", "2", "--train-problems", "2"]
    argv += ["--held-out", "2", "--digits", "1", "--rationales", "1", "--max-attempts", "2", "--steps", "1"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "STaR iteration 2" in printed and "held-out accuracy" in printed
    assert load_pretrained(out / "final").config.d_model == 32
    assert (out / "history.json").exists()


def test_star_help_and_bad_sizes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["star", "--help"])
    assert "sometimes right at --digits" in " ".join(capsys.readouterr().out.split())  # where STaR can start
    args = cli.build_parser().parse_args(["star"])
    args.train_problems = 0
    with pytest.raises(ValueError, match="train-problems"):
        cli.star(args)


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["demo", "--digits", "0"], "--digits"),
        (["demo", "--digits", "5", "-3"], "--digits"),
        (["demo", "--problems", "0"], "--problems"),
        (["demo", "--particles", "0"], "--particles"),
        (["star", "--digits", "0"], "--digits"),
        (["star", "--iterations", "0"], "--iterations"),
        (["star", "--train-problems", "0"], "--train-problems"),
        (["star", "--steps", "x"], "--steps"),
    ],
)
def test_bad_sizes_are_usage_errors_naming_the_option(argv, option, capsys, monkeypatch):
    import llmppl

    monkeypatch.setattr(llmppl, "load_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"usage: llmppl {argv[0]}" in err and f"argument {option}" in err and "expected an int >= 1" in err


def test_out_in_the_way_is_caught_before_the_run(tmp_path, capsys, monkeypatch):
    import llmppl

    monkeypatch.setattr(llmppl, "load_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for out in (a_file, a_file / "sub"):
        for command in ("demo", "star"):
            with pytest.raises(SystemExit):
                cli.main([command, "--out", str(out)])
            assert "argument --out: expected a folder" in capsys.readouterr().err
    with pytest.raises(FileExistsError):
        cli.demo(problems=1, digits=[1], out=str(a_file))


def test_extra_arguments_show_the_command_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "bogus"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: llmppl demo" in err and "unrecognized arguments: bogus" in err


def test_demo_rejects_bad_digits():
    with pytest.raises(ValueError, match="digits"):
        cli.demo(digits=[0])


def test_more_problems_than_the_split_holds_is_a_usage_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--digits", "1", "--problems", "12", "--out", str(tmp_path / "d")])
    assert exc.value.code == 2
    assert "4 found" in capsys.readouterr().err
