"""Does the twenty-questions answerer generalise to a phrasing it never saw for an object?

The held-out answerer metric asks about an (object, attribute) pair in the one phrasing of
the attribute's three that training never shows *for that object* (every phrasing is
trained with other objects). The shipped checkpoint scores 62 % there on balanced yes/no
(BENCHMARKS.md): it answers "no" to most held-out phrasings. This probe trains small
copies of the architecture on the answerer task alone, from scratch, and compares corpus
designs on the same held-out metric (:func:`llmppl.models.train.evaluate`):

* ``qa``: the answerer documents as :mod:`llmppl.models.tasks` wrote them until
  2026-11-28: each fact asked in the two of its attribute's three phrasings that are not
  held out for it (:func:`original_question`);
* ``qa+facts``: half of them, half fact sheets that list an object's attributes under
  their canonical names, ``Object: car. Facts: animal no; fly no; ...; wheels yes.``
  (the attribute name in one fixed form, a key the phrasings can be tied to);
* ``qa+pairs``: half of them, half documents that ask one question about the object in two
  training phrasings in a row, so that two phrasings of an attribute meet in one context;
* ``qa+phrasings``: the corpus now (:func:`llmppl.models.tasks.sample_problem`): half the
  questions in one of three more phrasings per attribute that are never held out, so each
  fact is trained in five phrasings; the same held-out test set.

    python benchmarks/answerer_probe.py --steps 3000 --variants qa qa+phrasings
"""

from __future__ import annotations

import argparse
import json
import random

import torch
from copy_probe import train_probe  # benchmarks/, next to this file

from llmppl.models import tasks as T
from llmppl.models.performer import PerformerConfig, PerformerLM
from llmppl.models.train import _encode_document, _pad, evaluate

VARIANTS = ("qa", "qa+facts", "qa+pairs", "qa+phrasings")


def fact_sheet(obj: str) -> tuple[str, str]:
    """``(prompt, completion)`` listing every attribute of ``obj`` under its canonical name.

    >>> fact_sheet("rose")[1].split("; ")[9]
    'plant yes'
    """
    facts = "; ".join(f"{a} {'yes' if T.KNOWLEDGE_BASE[obj][a] else 'no'}" for a in T._ATTR_ORDER)
    return f"Object: {obj}. Facts:", f" {facts}.\n"


def paired_question(rng: random.Random, obj: str) -> tuple[str, str]:
    """One attribute of ``obj`` asked in both of its training phrasings, one after the other.

    >>> p, c = paired_question(random.Random(0), "car")
    >>> p.startswith("Object: car. Q: ") and c.count(" A: ") == 1
    True
    """
    yes = rng.random() < 0.5
    attr = rng.choice([a for a in T._ATTR_ORDER if T.KNOWLEDGE_BASE[obj][a] == yes])
    held = T._held_out_phrasing(obj, attr)
    j, k = rng.sample([i for i in range(3) if i != held], 2)
    ans = "yes" if yes else "no"
    return f"Object: {obj}. Q: {T._QUESTIONS[attr][j]} A:", f" {ans}\nQ: {T._QUESTIONS[attr][k]} A: {ans}\n"


def original_question(rng: random.Random, obj: str) -> tuple[str, str]:
    """A balanced yes/no question about ``obj`` in one of the two phrasings trained for it.

    >>> p, c = original_question(random.Random(0), "car")
    >>> p.startswith("Object: car. Q: ") and c in (" yes\\n", " no\\n")
    True
    """
    yes = rng.random() < 0.5
    attr = rng.choice([a for a in T._ATTR_ORDER if T.KNOWLEDGE_BASE[obj][a] == yes])
    held = T._held_out_phrasing(obj, attr)
    k = rng.choice([i for i in range(3) if i != held])
    return f"Object: {obj}. Q: {T._QUESTIONS[attr][k]} A:", f" {'yes' if yes else 'no'}\n"


def batch(variant: str, step: int, seed: int, n_docs: int, tokenizer):
    """The training batch of ``step``: ``n_docs`` documents of ``variant``'s corpus."""
    rng = random.Random(f"answerer-probe:{seed}:{step}")
    docs, wts = [], []
    for j in range(n_docs):
        obj = rng.choice(list(T.KNOWLEDGE_BASE))
        if variant == "qa+phrasings":
            p = T.sample_problem("twenty_answerer", split="train", seed=seed, index=step * 4096 + j)
            prompt, completion = p.prompt, p.text[len(p.prompt) :]
        elif variant == "qa" or rng.random() < 0.5:
            prompt, completion = original_question(rng, obj)
        elif variant == "qa+facts":
            prompt, completion = fact_sheet(obj)
        else:
            prompt, completion = paired_question(rng, obj)
        ids, wt = _encode_document(tokenizer, prompt, completion, target_weight=1.0, prompt_weight=0.1, max_len=512)
        docs.append(ids)
        wts.append(wt)
    return _pad(docs, wts, tokenizer)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--eval-n", type=int, default=500)
    parser.add_argument("--docs", type=int, default=48, help="documents per batch")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {}
    for variant in args.variants:
        torch.manual_seed(args.seed)
        lm = PerformerLM(PerformerConfig(d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads))
        results[variant] = train_probe(
            lm,
            steps=args.steps,
            lr=args.lr,
            weight_decay=args.weight_decay,
            eval_every=args.eval_every,
            next_batch=lambda step, lm=lm, v=variant: batch(v, step, args.seed, args.docs, lm.tokenizer),
            measure=lambda lm=lm: {"held_out": evaluate(lm, "twenty_answerer", n=args.eval_n)},
            label=variant,
        )
    print("\n| variant | steps | held-out answerer (balanced) |")
    print("|---|---|---|")
    for variant, rows in results.items():
        print(f"| {variant} | {rows[-1]['step']} | {100 * rows[-1]['held_out']:.1f}% |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
