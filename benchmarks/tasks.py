"""Held-out greedy accuracy of the shipped Performer checkpoint, per task format.

Greedy decoding, exact match of the final answer, ``--n`` held-out problems per row
(never seen in training: :func:`llmppl.models.tasks.is_held_out`). The scratchpad rows
run the two-step cascade of DESIGN.md (work up to the newline, then the answer).

    python benchmarks/tasks.py                 # the shipped checkpoint, 500 per row
    python benchmarks/tasks.py --checkpoint runs/performer/final --n 100
    python benchmarks/tasks.py --breakdown --n 500   # the verifier's accuracy by kind of case,
                                                     # beside the model's own reading of the work
"""

from __future__ import annotations

import argparse
import time

import torch

from llmppl.models import load_pretrained
from llmppl.models.train import _balanced_facts, _greedy, _problems, evaluate

# (metric, what it measures, target from the issue or None for "report")
ROWS = [
    ("scratchpad_3", "scratchpad addition, 3 digits", 0.99),
    ("scratchpad_5", "scratchpad addition, 5 digits", 0.97),
    ("scratchpad_6", "scratchpad addition, 6 digits", 0.95),
    ("scratchpad_7", "scratchpad addition, 7 digits (beyond training)", None),
    ("scratchpad_8", "scratchpad addition, 8 digits (beyond training)", None),
    ("direct_2", "direct addition, 2 digits", None),
    ("direct_5", "direct addition, 5 digits", None),
    ("verifier", "verifier of worked solutions (balanced yes/no)", 0.97),
    ("calculator_call", "calculator: well-formed call", 0.95),
    ("calculator_answer", "calculator: answer given the result", 0.98),
    ("si_step", "selection-inference: single steps valid", 0.90),
    ("si_answer", "selection-inference: final answer after gold steps", None),
    ("twenty_answerer", "twenty questions: answerer (held-out phrasings, balanced accuracy)", 0.95),
    ("twenty_questioner", "twenty questions: questioner's next move = policy", None),
]


def row_size(metric: str, n: int, seed: int = 1234) -> int:
    """How many distinct problems ``evaluate(metric, n)`` scores (fewer than ``n`` where the
    held-out split has fewer, e.g. 2-digit additions or twenty-questions openings)."""
    kind, _, arg = metric.partition("_")
    if kind in ("scratchpad", "direct") and arg.isdigit():
        return len(_problems(kind, n, seed, digits=int(arg)))
    if metric == "twenty_answerer":
        return len(_balanced_facts(n, seed))
    task = {"si_answer": "selection_inference", "si_step": None}.get(metric, metric.split("_")[0])
    if metric == "twenty_questioner":
        task = "twenty_questioner"
    return n if task is None else len(_problems(task, n, seed))


def verifier_by_kind(lm, n: int, *, seed: int = 1234, batch: int = 125) -> dict[str, tuple[int, int]]:
    """Greedy verdicts on the ``verifier`` metric's ``n`` held-out problems, by kind of case.

    The same problems and decoding as :func:`~llmppl.models.train.evaluate`'s ``verifier``.

    :returns: kind (``none`` for the correct solutions; ``step``, ``carry``, ``answer``,
        ``operand`` for the corruptions) -> ``(right, total)``.
    """
    probs = _problems("verifier", n, seed)
    verdicts = _greedy(lm, [p.prompt for p in probs], 6, batch)
    out: dict[str, tuple[int, int]] = {}
    for p, v in zip(probs, verdicts, strict=True):
        right, total = out.get(p.meta["corruption"], (0, 0))
        out[p.meta["corruption"]] = (right + (v.strip() == p.target), total + 1)
    return out


@torch.no_grad()
def agreement_by_kind(lm, n: int, *, seed: int = 1234, batch: int = 125) -> dict[str, tuple[int, int]]:
    """The same cases read as a scratchpad: is every token of the work the model's own greedy choice?

    Each worked solution of the ``verifier`` metric is put after ``Q: a+b\nWork:`` and
    teacher-forced; the check says "no" where the model's argmax differs from a given
    token anywhere in the work or answer, "yes" otherwise. It measures whether the model
    knows where a solution is wrong, apart from whether its ``OK:`` verdict says so.

    :returns: kind -> ``(right, total)``, as :func:`verifier_by_kind`.
    """
    out: dict[str, tuple[int, int]] = {}
    probs = _problems("verifier", n, seed)
    for i in range(0, n, batch):
        chunk = probs[i : i + batch]
        heads = [lm.encode_prompt(f"Q: {p.meta['a']}+{p.meta['b']}\nWork:") for p in chunk]
        works = [lm.tokenizer.encode(p.text.split("\nWork:", 1)[1].rsplit("OK:", 1)[0]) for p in chunk]
        seqs = [h + w for h, w in zip(heads, works, strict=True)]
        ids = torch.full((len(seqs), max(map(len, seqs))), lm.tokenizer.pad_id, dtype=torch.long)
        for j, s in enumerate(seqs):  # padded at the end: causal, so no real position sees the padding
            ids[j, : len(s)] = torch.tensor(s)
        choice = lm(ids.to(lm.embed.weight.device)).argmax(-1).cpu()
        for p, h, w, row in zip(chunk, heads, works, choice, strict=True):
            says_no = bool((row[len(h) - 1 : len(h) + len(w) - 1] != torch.tensor(w)).any())
            right, total = out.get(p.meta["corruption"], (0, 0))
            out[p.meta["corruption"]] = (right + (says_no == (p.target == "no")), total + 1)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=None, help="a checkpoint folder (default: the shipped one)")
    p.add_argument("--n", type=int, default=500, help="held-out problems per row")
    p.add_argument("--batch", type=int, default=125, help="sequences decoded together")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", nargs="*", default=None, help="metric names to run (default: all)")
    p.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda)")
    p.add_argument("--breakdown", action="store_true", help="only the verifier's accuracy by kind of case")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    lm = load_pretrained(args.checkpoint, device=args.device)
    print(
        f"# {args.checkpoint or 'shipped checkpoint'}: {lm.num_parameters() / 1e6:.2f}M params, "
        f"greedy, {args.n} held-out problems per row, on {args.device}"
    )
    if args.breakdown:
        said = verifier_by_kind(lm, args.n, batch=args.batch)
        agree = agreement_by_kind(lm, args.n, batch=args.batch)
        print("| verifier case | of | `OK:` verdict right | own greedy reading agrees iff correct |")
        print("|---|---|---|---|")
        for kind, (right, total) in sorted(said.items()):
            print(f"| {kind} | {total} | {right / total:.1%} | {agree[kind][0] / total:.1%} |")
        return 0
    print("| task | accuracy | distinct problems | target | met | seconds |\n|---|---|---|---|---|---|")
    for metric, label, target in ROWS:
        if args.only and metric not in args.only:
            continue
        t0 = time.perf_counter()
        acc = evaluate(lm, metric, args.n, batch=args.batch)
        met = "" if target is None else ("yes" if acc >= target else "**no**")
        tgt = "report" if target is None else f">= {target:.0%}"
        size = row_size(metric, args.n)
        print(f"| {label} | {acc:.1%} | {size} | {tgt} | {met} | {time.perf_counter() - t0:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
