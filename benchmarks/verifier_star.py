"""Train the verifier on the model's own scratchpads, labelled by known answers (an experiment).

The verifier format of :mod:`llmppl.models.tasks` is trained on synthetic corruptions
(a wrong step, carry, answer or operand digit). Where a model's own mistakes look
different, a verifier of that corpus does not catch them, and SMC with it adds nothing
over self-consistency. This script does what Cobbe et al. (2021) do for GSM8K, the
verifier of the Language Model Cascades paper's §3.3: sample scratchpads from the model
for training-split problems with known answers, label each ``yes`` or ``no`` by its final
answer, balance the labels, and fine-tune the model on those ``Verify:`` documents (beside
its own correct scratchpads, so that it keeps writing them). It reports the verifier's
accuracy on the model's own scratchpads for held-out problems, before and after; measure
the cascades on the saved model with ``benchmarks/cascades.py --checkpoint OUT``.

    OMP_NUM_THREADS=1 python benchmarks/verifier_star.py --init runs/star8_p8_big/final \\
        --digits 8 --problems 600 --samples 4 --steps 150 --out runs/verifier_star8
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time

import torch

import llmppl
from llmppl.cascades.star import addition_problems, star_document, star_pair
from llmppl.models.train import fine_tune

WORK = re.compile(r"^ (.+)\nA: (\d+)\n")


def sample_scratchpads(lm, problems, samples: int, batch: int = 64, seed: int = 0) -> list[tuple[str, str, str, bool]]:
    """``(question, work, answer, correct)`` for ``samples`` sampled scratchpads per problem.

    Samples that do not parse as ``Work: ...\\nA: <digits>`` are dropped.
    """
    gen = torch.Generator().manual_seed(seed)
    jobs = [(q, a) for q, a in problems for _ in range(samples)]
    out = []
    for i in range(0, len(jobs), batch):
        chunk = jobs[i : i + batch]
        texts = lm.generate(
            [f"Q: {q}\nWork:" for q, _ in chunk], max_tokens=200, stop="\n\n", greedy=False, generator=gen
        )
        for (q, a), text in zip(chunk, texts, strict=True):
            m = WORK.match(text if text.endswith("\n") else text + "\n")
            if m:
                out.append((q, m.group(1), m.group(2), m.group(2) == a))
    return out


STEP = re.compile(r"(\d)\+(\d)(?:\+(\d))?=(\d+) c(\d)")


def error_kind(question: str, work: str) -> str:
    """What is wrong in a scratchpad whose answer is wrong: a misread operand digit or not.

    >>> error_kind("12+34", "2+4=6 c0; 1+3+0=4 c0"), error_kind("12+34", "2+3=5 c0; 1+3+0=4 c0")
    ('other', 'operand')
    """
    a, b = question.split("+")
    a, b = a.zfill(len(b))[::-1], b.zfill(len(a))[::-1]
    for i, step in enumerate(work.split("; ")):
        m = STEP.fullmatch(step)
        if m and i < len(a) and (m.group(1), m.group(2)) != (a[i], b[i]):
            return "operand"
    return "other"


def verify_pair(question: str, work: str, answer: str, correct: bool) -> tuple[str, str]:
    """A ``Verify:`` training pair in the verifier format of :mod:`llmppl.models.tasks`.

    >>> verify_pair("12+34", "2+4=6 c0; 1+3+0=4 c0", "46", True)
    ('Verify: 12+34\\nWork: 2+4=6 c0; 1+3+0=4 c0\\nA: 46\\nOK:', ' yes\\n')
    """
    return f"Verify: {question}\nWork: {work}\nA: {answer}\nOK:", " yes\n" if correct else " no\n"


def verifier_accuracy(lm, samples) -> dict:
    """Greedy accuracy of ``lm``'s verifier on ``samples``, overall and by label."""
    prompts = [verify_pair(*s)[0] for s in samples]
    said = []
    for i in range(0, len(prompts), 128):
        said += [t.strip() for t in lm.generate(prompts[i : i + 128], max_tokens=4)]
    right = [(s == "yes") == c for s, (*_, c) in zip(said, samples, strict=True)]
    yes = [r for r, (*_, c) in zip(right, samples, strict=True) if c]
    no = [r for r, (*_, c) in zip(right, samples, strict=True) if not c]
    return {
        "accuracy": sum(right) / len(right),
        "on_correct": sum(yes) / max(len(yes), 1),
        "on_wrong": sum(no) / max(len(no), 1),
        "n": len(right),
        "n_wrong": len(no),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--init", required=True, help="checkpoint folder to start from")
    p.add_argument("--out", required=True, help="folder for the fine-tuned model and results.json")
    p.add_argument("--digits", type=int, nargs="+", default=[8])
    p.add_argument("--problems", type=int, default=600, help="training-split problems")
    p.add_argument("--held-out", type=int, default=300, help="held-out problems for the verifier's accuracy")
    p.add_argument("--samples", type=int, default=4, help="scratchpads sampled per problem")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--kinds-only", action="store_true", help="only count what is wrong in wrong held-out samples")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    lm = llmppl.load_pretrained(args.init)
    train = addition_problems(args.problems, args.digits, split="train", seed=args.seed, start=10_000)
    held = addition_problems(args.held_out, args.digits, split="test", seed=args.seed, start=10_000)
    held_samples = sample_scratchpads(lm, held, 2, seed=args.seed + 1)
    wrong = [error_kind(q, w) for q, w, _, c in held_samples if not c]
    n_misread = wrong.count("operand")
    print(f"{len(wrong)} of {len(held_samples)} held-out samples wrong; a misread operand digit in {n_misread}")
    if args.kinds_only:
        return
    before = verifier_accuracy(lm, held_samples)
    print(f"verifier on its own held-out scratchpads, before: {json.dumps(before)}", flush=True)

    samples = sample_scratchpads(lm, train, args.samples, seed=args.seed)
    good = [s for s in samples if s[3]]
    bad = [s for s in samples if not s[3]]
    rng = random.Random(args.seed)
    k = min(len(good), len(bad))
    verify = [verify_pair(*s) for s in rng.sample(good, k) + rng.sample(bad, k)]
    rationales = sorted({star_document(q, w, a) for q, w, a, _ in good})
    documents = verify + [star_pair(d) for d in rationales]
    print(
        f"{len(samples)} samples ({len(good)} correct); {len(verify)} verifier documents, "
        f"{len(rationales)} scratchpads; fine-tuning {args.steps} steps",
        flush=True,
    )
    fine_tune(lm, documents, steps=args.steps, lr=args.lr, seed=args.seed, progress=True)
    after = verifier_accuracy(lm, held_samples)
    print(f"verifier on its own held-out scratchpads, after: {json.dumps(after)}", flush=True)
    lm.save_pretrained(args.out)
    result = {
        "args": vars(args),
        "before": before,
        "after": after,
        "train_samples": len(samples),
        "train_correct": len(good),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    with open(f"{args.out}/results.json", "w") as f:
        json.dump(result, f, indent=1)
    print(f"saved to {args.out} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
