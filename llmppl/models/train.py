"""Train a :class:`~llmppl.models.performer.PerformerLM` on the task mixture of :mod:`llmppl.models.tasks`.

``python -m llmppl.models.train --out runs/performer --steps 4000`` (also ``llmppl train``).
CPU by default (``--device cuda`` when present); a tqdm progress bar; a held-out
evaluation every ``--eval-every`` steps; a resumable checkpoint (``train_state.pt``,
weights, optimiser, step) every ``--save-every`` steps, resumed automatically from
``--out``; the batches are a pure function of ``--seed`` and the step, so a run resumed
from a checkpoint sees the same data as an uninterrupted one (resuming with other
arguments, e.g. a next phase's ``--steps`` and ``--lr``, warns which differ; another
``--seed`` or architecture is refused). ``--max-digits
'{"scratchpad": 3, "verifier": 3}'`` caps the operand length of the addition tasks (the
STaR regime: worked solutions only up to 3 digits); without it nothing changes. With
``--max-digits-until STEP`` the cap is a curriculum: it holds below ``STEP``, then every
length is trained (the model learns to copy digits on short operands first; see
BENCHMARKS.md). ``--init pretrained`` (or a checkpoint folder) goes on training existing
weights with a fresh optimiser and schedule, where no ``train_state.pt`` is at hand.

Fine-tuning an existing model on documents (STaR's rationales, or any text):
:func:`fine_tune` in Python, or on the command line::

    python -m llmppl.models.train finetune --init runs/performer/final --data docs.jsonl --out runs/ft

where each line of ``docs.jsonl`` is ``{"prompt": ..., "completion": ...}`` (prompt
tokens weighted :data:`PROMPT_WEIGHT`, as in training) or ``{"text": ...}`` (all of it a
completion). ``llmppl train finetune ...`` is the same command.

>>> args = build_parser().parse_args(["--out", "x", "--steps", "10"])
>>> args.steps, args.seed
(10, 0)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time

import torch

from . import tasks as T
from .performer import PerformerConfig, PerformerLM

__all__ = [
    "build_finetune_parser",
    "build_parser",
    "document_loss",
    "evaluate",
    "fine_tune",
    "finetune_main",
    "main",
    "make_batch",
    "read_documents",
    "train",
]

# typical document lengths in bytes, for sizing batches by tokens
_TYPICAL_LENGTH = {
    "direct": 24,
    "scratchpad": 90,
    "verifier": 100,
    "calculator": 90,
    "selection_inference": 260,
    "twenty_answerer": 48,
    "twenty_questioner": 206,
}
PROMPT_WEIGHT = 0.1  # loss weight of prompt tokens (random operands, facts: mostly noise)
TARGET_WEIGHT = {"verifier": 3.0}  # loss weight of the completion; default 1


def _encode_document(tokenizer, prompt: str, completion: str, *, target_weight: float, prompt_weight: float, max_len):
    """``(ids, weights)`` of one document: BOS + prompt at ``prompt_weight``, completion + EOS at ``target_weight``."""
    head = [tokenizer.bos_id, *tokenizer.encode(prompt)]
    rest = [*tokenizer.encode(completion), tokenizer.eos_id]
    ids = (head + rest)[:max_len]
    wt = ([prompt_weight] * len(head) + [target_weight] * len(rest))[:max_len]
    return ids, wt


def _pad(docs: list[list[int]], wts: list[list[float]], tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    L = max(len(d) for d in docs)
    ids = torch.full((len(docs), L), tokenizer.pad_id, dtype=torch.long)
    weight = torch.zeros(len(docs), L)
    for i, (d, wt) in enumerate(zip(docs, wts, strict=True)):
        ids[i, : len(d)] = torch.tensor(d)
        weight[i, : len(wt)] = torch.tensor(wt)
    return ids, weight


def _capped_lengths(rng: random.Random, max_digits: int) -> tuple[int, int]:
    """Operand lengths up to ``max_digits``, drawn as the task generator draws them."""
    la = rng.randint(1, max_digits)
    lb = la if rng.random() < 0.5 else rng.randint(1, max_digits)
    return (la, lb) if rng.random() < 0.5 else (lb, la)


def _problem_index(step: int, j: int) -> int:
    """The stream index of document ``j`` of ``step``'s batch: ``step * 4096 + j`` for the first
    4096 (each index once); beyond, distinct negative indices (Cantor pairing of ``step``, ``j - 4096``)."""
    if j < 4096:
        return step * 4096 + j
    k = j - 4096
    return -1 - ((step + k) * (step + k + 1) // 2 + k)


def make_batch(
    step: int,
    *,
    seed: int,
    batch_tokens: int,
    weights: dict[str, float],
    tokenizer,
    max_len: int = 512,
    max_digits: dict[str, int] | None = None,
):
    """The training batch of ``step``: documents of one task, padded, with loss weights.

    A pure function of ``(step, seed)`` (and ``max_digits``): resuming replays the same data.

    :param dict max_digits: task -> the longest operand (addition tasks: ``scratchpad``,
        ``direct``, ``verifier``); ``None`` (default) keeps the generators' own range.
    :returns: ``(ids LongTensor[B, L], weights Tensor[B, L], task)``.

    >>> from llmppl.models.tokenizer import ByteTokenizer
    >>> ids, w, task = make_batch(0, seed=0, batch_tokens=256, weights={"direct": 1.0}, tokenizer=ByteTokenizer())
    >>> ids.shape[0] == w.shape[0] and task
    'direct'
    """
    rng = random.Random(f"batch:{seed}:{step}")
    tasks, w = list(weights), list(weights.values())
    task = rng.choices(tasks, w)[0]
    n = max(1, batch_tokens // _TYPICAL_LENGTH.get(task, 100))
    cap = (max_digits or {}).get(task)
    docs, wts = [], []
    for j in range(n):
        kwargs = {}
        if cap is not None:
            kwargs["digits"] = _capped_lengths(random.Random(f"digits:{seed}:{step}:{j}"), cap)
        p = T.sample_problem(task, split="train", seed=seed, index=_problem_index(step, j), **kwargs)
        ids, wt = _encode_document(
            tokenizer,
            p.prompt,
            p.text[len(p.prompt) :],
            target_weight=TARGET_WEIGHT.get(task, 1.0),
            prompt_weight=PROMPT_WEIGHT,
            max_len=max_len,
        )
        docs.append(ids)
        wts.append(wt)
    ids, weight = _pad(docs, wts, tokenizer)
    return ids, weight, task


class _StepBatches(torch.utils.data.IterableDataset):
    """The batches of steps ``start, start + 1, ...`` (``make_batch``), split among loader workers.

    Worker ``i`` of ``n`` builds steps ``start + i, start + i + n, ...``, and the loader
    takes them round-robin, so the stream is the same sequence whatever ``n`` is.
    """

    def __init__(self, start: int, stop: int, kwargs: dict, max_digits, until):
        super().__init__()
        self.start, self.stop, self.kwargs, self.max_digits, self.until = start, stop, kwargs, max_digits, until

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        first, stride = (0, 1) if info is None else (info.id, info.num_workers)
        for step in range(self.start + first, self.stop, stride):
            capped = self.max_digits if self.until is None or step < self.until else None
            yield make_batch(step, max_digits=capped, **self.kwargs)


def _batch_stream(start: int, args, weights, tokenizer, max_digits, until):
    """An iterator of ``(ids, weights, task)`` for steps ``start, ..., args.steps - 1``."""
    kwargs = {"seed": args.seed, "batch_tokens": args.batch_tokens, "weights": weights, "tokenizer": tokenizer}
    data = _StepBatches(start, args.steps, kwargs, max_digits, until)
    workers = getattr(args, "workers", 0) or 0
    if workers <= 0:
        return iter(data)
    loader = torch.utils.data.DataLoader(
        data, batch_size=None, num_workers=workers, prefetch_factor=4, pin_memory=str(args.device).startswith("cuda")
    )
    return iter(loader)


def _loss_read_every(device) -> int:
    """Steps between reading the loss back: every step on the CPU; on a GPU a read waits
    for the GPU to finish, so ten at a time (the loop stays ahead of the device)."""
    return 1 if str(device).startswith("cpu") else 10


def _weighted_loss(model: PerformerLM, ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    logits = model(ids[:, :-1])
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1), reduction="none"
    )
    w = weight[:, 1:].reshape(-1)
    return (ce * w).sum() / w.sum().clamp_min(1e-6)


# ------------------------------------------------------------------ evaluation


def _greedy(model, prompts, max_tokens, batch=64, stop="\n"):
    out = []
    for i in range(0, len(prompts), batch):
        out += model.generate(prompts[i : i + batch], max_tokens=max_tokens, stop=stop)
    return out


def _problems(task, n, seed, **kw):
    """``n`` held-out problems with distinct prompts (fewer when the split has fewer)."""
    out, seen, i = [], set(), 0
    while len(out) < n and i < 50 * n + 1000:
        p = T.sample_problem(task, split="test", seed=seed, index=i, **kw)
        i += 1
        if p.prompt not in seen:
            seen.add(p.prompt)
            out.append(p)
    return out


def _balanced_facts(n: int, seed: int) -> list:
    """Up to ``n`` distinct held-out answerer facts, half "yes" where there are enough."""
    rng = random.Random(f"twenty_answerer:{seed}")
    facts = T.held_out_facts()
    yes = [p for p in facts if p.target == "yes"]
    no = [p for p in facts if p.target == "no"]
    rng.shuffle(yes)
    rng.shuffle(no)
    k_yes = min(len(yes), (n + 1) // 2)
    return yes[:k_yes] + no[: min(len(no), n - k_yes)]


def evaluate(model: PerformerLM, metric: str, n: int = 100, *, seed: int = 1234, batch: int = 64) -> float:
    """Greedy held-out accuracy of one metric on ``n`` problems.

    Metrics: ``scratchpad_<d>`` and ``direct_<d>`` (``d`` digits per operand; the
    scratchpad runs as the two-step cascade: work up to the newline, then the answer),
    ``verifier``, ``calculator_call`` (well-formed call exactly as expected),
    ``calculator_answer`` (answer given the tool's result), ``si_step`` (single
    Select/Infer steps valid, from gold prefixes), ``si_answer``, ``twenty_answerer``
    (balanced accuracy, the mean of the "yes" and the "no" facts' accuracies, over distinct
    held-out facts), ``twenty_questioner`` (the policy's next question or guess). Every
    metric uses distinct prompts; where the split has fewer than ``n``, all of them.

    >>> lm = PerformerLM(PerformerConfig.tiny())
    >>> 0.0 <= evaluate(lm, "direct_2", n=2) <= 1.0
    True
    """
    model.eval()
    kind, _, arg = metric.partition("_")
    if kind in ("scratchpad", "direct") and arg.isdigit():
        d = int(arg)
        probs = _problems(kind, n, seed, digits=d)
        if kind == "direct":
            answers = _greedy(model, [p.prompt for p in probs], d + 4, batch)
        else:
            works = _greedy(model, [p.prompt for p in probs], 14 * d + 8, batch)
            answers = _greedy(model, [f"{p.prompt}{w}\nA:" for p, w in zip(probs, works, strict=True)], d + 4, batch)
        return sum(a.strip() == p.target for a, p in zip(answers, probs, strict=True)) / len(probs)
    if metric == "twenty_answerer":
        probs = _balanced_facts(n, seed)
        answers = _greedy(model, [p.prompt for p in probs], 6, batch)
        right = {"yes": [], "no": []}
        for a, p in zip(answers, probs, strict=True):
            right[p.target].append(a.strip() == p.target)
        rates = [sum(r) / len(r) for r in right.values() if r]
        return sum(rates) / len(rates)
    if metric in ("verifier", "si_answer"):
        task = {"si_answer": "selection_inference"}.get(metric, metric)
        probs = _problems(task, n, seed)
        prompts = [p.prompt + ("A:" if task == "selection_inference" else "") for p in probs]
        if task == "selection_inference":  # the answer after the gold steps
            prompts = [p.text[: p.text.rindex("A:") + 2] for p in probs]
        answers = _greedy(model, prompts, 6, batch)
        return sum(a.strip() == p.target for a, p in zip(answers, probs, strict=True)) / len(probs)
    if metric == "calculator_call":
        probs = _problems("calculator", n, seed)
        calls = _greedy(model, [p.prompt for p in probs], 40, batch)
        return sum(c.strip() == p.target for c, p in zip(calls, probs, strict=True)) / len(probs)
    if metric == "calculator_answer":
        probs = _problems("calculator", n, seed)
        prompts = [p.text[: p.text.rindex("A:") + 2] for p in probs]
        answers = _greedy(model, prompts, 16, batch)
        return sum(a.strip() == p.meta["result"] for a, p in zip(answers, probs, strict=True)) / len(probs)
    if metric == "twenty_questioner":
        probs = _problems("twenty_questioner", n, seed)
        # the move ends where the answerer's turn begins, as in cascades.twenty_questions
        moves = _greedy(model, [p.prompt for p in probs], 40, batch, stop=[" A:", "\n"])
        return sum(m.strip() == p.target for m, p in zip(moves, probs, strict=True)) / len(probs)
    if metric == "si_step":
        cases = []  # (problem, known, prompt)
        i = 0
        while len(cases) < n:
            p = T.sample_problem("selection_inference", split="test", seed=seed, index=i)
            i += 1
            steps = p.meta["steps"]
            if not steps:
                continue
            j = random.Random(f"si_step:{seed}:{i}").randrange(len(steps))
            person = p.meta["person"]
            known = [f"{a} is {b}." for a, b in p.meta["facts"]] + [f"{person} is {s[2]}." for s in steps[:j]]
            prefix = p.prompt + "".join(
                f"Select: {' '.join([*sel, rule])}\nInfer: {person} is {new}.\n" for sel, rule, new in steps[:j]
            )
            cases.append((p, known, prefix + "Select:"))
        sels = _greedy(model, [c[2] for c in cases], 120, batch)
        infs = _greedy(model, [f"{c[2]}{s}\nInfer:" for c, s in zip(cases, sels, strict=True)], 40, batch)
        return sum(T.check_selection_step(c[0], c[1], s, f) for c, s, f in zip(cases, sels, infs, strict=True)) / n
    raise ValueError(f"evaluate: unknown metric {metric!r}")


QUICK_METRICS = (
    "scratchpad_3",
    "scratchpad_5",
    "direct_2",
    "verifier",
    "calculator_call",
    "si_step",
    "twenty_answerer",
)


# ------------------------------------------------------------------ training


def _int_at_least(low: int):
    """An argparse ``type``: an int ``>= low`` (argparse names the option in its usage error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an int >= {low}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def _option_type(check):
    """An argparse ``type`` that runs ``check(text)`` and keeps ``text``; its ``ValueError``
    (``"--option: expected ..."``) becomes the usage error, which names the option itself."""

    def parse(text: str) -> str:
        try:
            check(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).partition(": ")[2]) from None
        return text

    return parse


def _check_device(text: str) -> str:
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device: expected cpu or cuda (a torch device), got {text!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device: expected cpu, or cuda with a CUDA GPU present; got {text!r}, "
            "and torch.cuda.is_available() is False"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device: expected a CUDA GPU below cuda:{torch.cuda.device_count()}, got {text!r}")
    return text


def _json_option(text: str, option: str, expected: str):
    try:
        return json.loads(text)
    except ValueError as e:
        raise ValueError(f"{option}: expected {expected}, got {text!r} (not JSON: {e})") from None


def _parse_weights(text: str | None) -> dict[str, float]:
    if not text:
        return dict(T.DEFAULT_WEIGHTS)
    expected = f"a JSON object mapping tasks in {T.TASKS} to numbers >= 0, not all 0"
    value = _json_option(text, "--weights", expected)
    if not (
        isinstance(value, dict)
        and all(
            k in T.TASKS and isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < math.inf
            for k, v in value.items()
        )
        and sum(value.values()) > 0
    ):
        raise ValueError(f"--weights: expected {expected}, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m llmppl.models.train``.

    >>> args = build_parser().parse_args(["--out", "runs/x", "--d-model", "64", "--weights", '{"scratchpad": 1}'])
    >>> args.out, args.d_model, args.weights, args.device, args.init
    ('runs/x', 64, '{"scratchpad": 1}', 'cpu', None)
    """
    positive, non_negative = _int_at_least(1), _int_at_least(0)
    p = argparse.ArgumentParser(prog="llmppl train", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="run folder: checkpoints, log, final weights")
    p.add_argument("--steps", type=positive, default=4000, help="optimiser steps (cosine schedule length)")
    p.add_argument("--batch-tokens", type=positive, default=3072, help="tokens per batch (approximate)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.05)
    p.add_argument("--warmup", type=non_negative, default=150)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--d-model", type=positive, default=192)
    p.add_argument("--n-layers", type=positive, default=4)
    p.add_argument("--n-heads", type=positive, default=6)
    p.add_argument("--num-features", type=positive, default=64)
    p.add_argument("--mlp-ratio", type=positive, default=4)
    p.add_argument("--eval-every", type=non_negative, default=500, help="steps between held-out evaluations (0: never)")
    p.add_argument("--eval-n", type=positive, default=48, help="held-out problems per metric at each evaluation")
    p.add_argument("--save-every", type=positive, default=200, help="steps between resumable checkpoints")
    p.add_argument("--threads", type=positive, default=1, help="torch CPU threads (1 is fastest on a busy 2-core box)")
    p.add_argument("--device", type=_option_type(_check_device), default="cpu", help="cpu, or cuda (a CUDA GPU)")
    p.add_argument(
        "--weights",
        type=_option_type(_parse_weights),
        default=None,
        help=f"task mixture as JSON, e.g. '{{\"scratchpad\": 1}}'; tasks: {', '.join(T.TASKS)}",
    )
    p.add_argument(
        "--max-digits",
        type=_option_type(_parse_max_digits),
        default=None,
        help='longest operand per addition task as JSON, e.g. \'{"scratchpad": 3, "verifier": 3}\' '
        "(default: the generators' own, up to 6)",
    )
    p.add_argument(
        "--max-digits-until",
        type=non_negative,
        default=None,
        help="the --max-digits cap holds for steps below this one, then every length is trained "
        "(a curriculum: short operands until the model copies digits; default: the whole run)",
    )
    p.add_argument(
        "--init",
        default=None,
        help="start from this checkpoint folder's weights (and its model config) with a fresh optimiser "
        "and schedule; 'pretrained' is the shipped one (default: random initialisation)",
    )
    p.add_argument(
        "--workers",
        type=non_negative,
        default=0,
        help="processes that build batches ahead of the optimiser (the same batches; 0: in the loop). "
        "On a GPU the Python task generators are the bottleneck without them",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="stop (and save) once this many wall-clock seconds have passed, even before --steps "
        "(the learning-rate schedule stays the one of --steps)",
    )
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar (log lines only)")
    return p


def _init_weights(path: str | None) -> PerformerLM | None:
    if path is None:
        return None
    if path == "pretrained":
        from .pretrained import load_pretrained

        return load_pretrained()
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"--init: expected 'pretrained' or a checkpoint folder with config.json, got {path!r}")
    return PerformerLM.from_pretrained(path)


def _parse_max_digits(text: str | None) -> dict[str, int] | None:
    if not text:
        return None
    expected = "a JSON object mapping ('scratchpad', 'direct', 'verifier') to ints >= 1"
    value = _json_option(text, "--max-digits", expected)
    if not isinstance(value, dict) or any(
        k not in ("scratchpad", "direct", "verifier") or isinstance(v, bool) or not isinstance(v, int) or v < 1
        for k, v in value.items()
    ):
        raise ValueError(f"--max-digits: expected {expected}, got {text!r}")
    return value


def _lr(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    frac = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def _log(out: str, record: dict) -> None:
    with open(os.path.join(out, "log.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")


_NOT_COMPARED = {"out", "init", "device", "threads", "workers", "no_progress", "max_seconds"}


def _check_resume(ckpt: dict, config: PerformerConfig, args, ckpt_path: str) -> None:
    """Refuse a resume whose model config differs; warn of arguments that differ from the saved run's."""
    saved, new = ckpt["config"], config.to_dict()
    differ = [k for k in new if saved.get(k) != new[k]]
    if differ:
        option = {k: "seed" if k == "projection_seed" else k for k in differ}
        was = "; ".join(
            f"{k}{f' (--{option[k]})'.replace('_', '-') if hasattr(args, option[k]) else ''}: "
            f"saved {saved.get(k)!r}, got {new[k]!r}"
            for k in differ
        )
        raise ValueError(f"train: --out {args.out} holds a run with another model config: {was}")
    warn = []
    if getattr(args, "init", None) is not None:
        warn.append(f"--init {args.init} is ignored: the run resumes from {ckpt_path}")
    old = ckpt.get("args") or {}  # absent in states saved before the arguments were
    changed = [k for k, v in vars(args).items() if k in old and k not in _NOT_COMPARED and old[k] != v]
    if changed:
        warn.append("arguments differ from the saved run (saved -> now, the new ones apply from here on): ")
        warn[-1] += ", ".join(f"--{k.replace('_', '-')} {old[k]!r} -> {getattr(args, k)!r}" for k in changed)
    for line in warn:
        print(f"train: warning: resuming --out {args.out}: {line}", file=sys.stderr)


def train(args) -> PerformerLM:
    """Run (or resume) training as configured by ``args`` (from :func:`build_parser`).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     a = build_parser().parse_args(["--out", d, "--steps", "2", "--d-model", "16", "--n-heads", "2",
    ...         "--n-layers", "1", "--num-features", "8", "--batch-tokens", "64", "--eval-every", "0", "--no-progress"])
    ...     train(a).config.d_model
    16
    """
    from tqdm.auto import tqdm

    max_digits = _parse_max_digits(getattr(args, "max_digits", None))
    weights = _parse_weights(args.weights)
    _check_device(args.device)
    until = getattr(args, "max_digits_until", None)
    if until is not None and (max_digits is None or until < 0):
        raise ValueError(
            f"--max-digits-until: expected a step >= 0 together with --max-digits, got {until} "
            f"with --max-digits {getattr(args, 'max_digits', None)!r}"
        )
    init = _init_weights(getattr(args, "init", None))
    if init is not None:  # the architecture is the checkpoint's
        for name in ("d_model", "n_layers", "n_heads", "num_features", "mlp_ratio"):
            setattr(args, name, getattr(init.config, name))
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if str(args.device).startswith("cuda"):  # TF32 matrix products: the loss curve is the same, 2-3x faster
        torch.backends.cuda.matmul.allow_tf32 = True
    os.makedirs(args.out, exist_ok=True)
    config = (
        init.config
        if init is not None
        else PerformerConfig(
            d_model=args.d_model,
            n_layers=args.n_layers,
            n_heads=args.n_heads,
            num_features=args.num_features,
            mlp_ratio=args.mlp_ratio,
            projection_seed=args.seed,
        )
    )
    model = PerformerLM(config).to(args.device)
    if init is not None:
        model.load_state_dict(init.state_dict())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    ckpt_path = os.path.join(args.out, "train_state.pt")
    step, elapsed, ema, tokens = 0, 0.0, None, 0
    if os.path.exists(ckpt_path):
        ckpt = torch.load(ckpt_path, map_location=args.device, weights_only=False)
        _check_resume(ckpt, config, args, ckpt_path)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        step, elapsed = ckpt["step"], ckpt.get("elapsed", 0.0)
        ema, tokens = ckpt.get("loss_ema"), ckpt.get("tokens", 0)  # absent before they were saved
        print(f"resumed from {ckpt_path} at step {step}", file=sys.stderr)
    start = step
    tok = model.tokenizer
    meta = {"command": " ".join(sys.argv), "args": vars(args), "params": model.num_parameters()}

    def save():
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step,
                "config": config.to_dict(),
                "elapsed": elapsed,
                "args": dict(vars(args)),
                "loss_ema": ema,
                "tokens": tokens,
            },
            ckpt_path + ".tmp",
        )
        os.replace(ckpt_path + ".tmp", ckpt_path)
        model.save_pretrained(
            os.path.join(args.out, "final"), extra={"training": {**meta, "step": step, "train_seconds": round(elapsed)}}
        )

    bar = tqdm(total=args.steps, initial=step, disable=args.no_progress, dynamic_ncols=True)
    batches = _batch_stream(step, args, weights, tok, max_digits, until)
    max_seconds = getattr(args, "max_seconds", None)
    read_every = _loss_read_every(args.device)
    pending = []  # (step, task, loss) not yet read back

    def read_losses(ema):
        if not pending:
            return ema
        values = torch.stack([p[2] for p in pending]).tolist()
        for (s_, task_, _), lv in zip(pending, values, strict=True):
            if not math.isfinite(lv):
                raise FloatingPointError(f"train: non-finite loss at step {s_} (task {task_})")
            ema = lv if ema is None else 0.98 * ema + 0.02 * lv
        pending.clear()
        return ema

    def log_progress():
        loss, seconds = round(ema, 4), round(elapsed, 1)
        _log(args.out, {"step": step, "loss_ema": loss, "lr": _lr(step, args), "elapsed": seconds, "tokens": tokens})

    t_start = t_last = time.time()
    while step < args.steps:
        if max_seconds is not None and time.time() - t_start >= max_seconds:
            bar.write(f"--max-seconds {max_seconds:g}: stopping at step {step} of {args.steps}")
            break
        model.train()
        ids, w, task = next(batches)
        ids, w = ids.to(args.device, non_blocking=True), w.to(args.device, non_blocking=True)
        for g in opt.param_groups:
            g["lr"] = _lr(step, args)
        loss = _weighted_loss(model, ids, w)
        pending.append((step, task, loss.detach()))
        if (step + 1) % read_every == 0 or (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            # on a GPU, reading the loss waits for the GPU: read ten at a time, and always
            # before a checkpoint is written, so no non-finite step is ever saved
            ema = read_losses(ema)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += ids.numel()
        now = time.time()
        elapsed += now - t_last
        t_last = now
        bar.update(1)
        if ema is not None:
            bar.set_postfix(loss=f"{ema:.3f}", task=task[:10])
        if step % 50 == 0:
            log_progress()
        if step % args.save_every == 0 or step == args.steps:
            save()
        if args.eval_every and (step % args.eval_every == 0 or step == args.steps):
            t0 = time.time()
            scores = {m: evaluate(model, m, args.eval_n) for m in QUICK_METRICS}
            _log(args.out, {"step": step, "eval": scores, "eval_seconds": round(time.time() - t0, 1)})
            bar.write(f"step {step} eval: " + " ".join(f"{k}={v:.2f}" for k, v in scores.items()))
            t_last = time.time()  # evaluation time is not training time
    bar.close()
    ema = read_losses(ema)
    if step > start and step % 50:  # the last steps' record, so the log ends where training did
        log_progress()
    save()
    return model


# ------------------------------------------------------------------ fine-tuning on documents


def _as_pairs(documents, where: str) -> list[tuple[str, str]]:
    """``documents`` as ``(prompt, completion)`` pairs; a ``str`` is all completion."""
    if isinstance(documents, (str, bytes)) or not hasattr(documents, "__iter__"):
        raise TypeError(f"{where}: documents: expected a list of documents, got {type(documents).__name__}")
    pairs = []
    for i, doc in enumerate(documents):
        if isinstance(doc, str):
            pairs.append(("", doc))
        elif isinstance(doc, (tuple, list)) and len(doc) == 2 and all(isinstance(x, str) for x in doc):
            pairs.append((doc[0], doc[1]))
        else:
            raise TypeError(
                f"{where}: documents[{i}]: expected a str or a (prompt, completion) pair of str, got {doc!r:.80}"
            )
    return pairs


def _document_batches(encoded, batch_tokens: int, rng: random.Random | None):
    """Groups of document indices of about ``batch_tokens`` tokens (shuffled when ``rng`` is given)."""
    order = list(range(len(encoded)))
    if rng is not None:
        rng.shuffle(order)
    batch, size = [], 0
    for i in order:
        n = len(encoded[i][0])
        if batch and size + n > batch_tokens:
            yield batch
            batch, size = [], 0
        batch.append(i)
        size += n
    if batch:
        yield batch


def _encode_all(lm, pairs, prompt_weight: float, max_len: int):
    return [
        _encode_document(lm.tokenizer, p, c, target_weight=1.0, prompt_weight=prompt_weight, max_len=max_len)
        for p, c in pairs
    ]


def document_loss(
    lm: PerformerLM, documents, *, prompt_weight: float = PROMPT_WEIGHT, batch_tokens: int = 4096, max_len: int = 512
) -> float:
    """The weighted mean next-token loss (nats) of ``lm`` on ``documents``, as :func:`fine_tune` weighs it.

    :param documents: ``str`` documents (all completion) or ``(prompt, completion)`` pairs.

    >>> lm = PerformerLM(PerformerConfig.tiny())
    >>> 4.0 < document_loss(lm, [("Q: 1+1\\nA:", " 2\\n"), "hello"]) < 7.0
    True
    """
    pairs = _as_pairs(documents, "document_loss")
    if not pairs:
        raise ValueError("document_loss: documents: expected at least one document, got none")
    encoded = _encode_all(lm, pairs, prompt_weight, max_len)
    device = next(lm.parameters()).device
    was_training = lm.training
    lm.eval()
    total, weight_sum = 0.0, 0.0
    with torch.no_grad():
        for batch in _document_batches(encoded, batch_tokens, None):
            ids, w = _pad([encoded[i][0] for i in batch], [encoded[i][1] for i in batch], lm.tokenizer)
            ids, w = ids.to(device), w.to(device)
            mass = float(w[:, 1:].sum())
            total += float(_weighted_loss(lm, ids, w)) * mass
            weight_sum += mass
    lm.train(was_training)
    return total / max(weight_sum, 1e-12)


def fine_tune(
    lm: PerformerLM,
    documents,
    *,
    steps: int = 200,
    lr: float = 3e-4,
    batch_tokens: int = 3072,
    warmup: int = 10,
    min_lr_ratio: float = 0.1,
    weight_decay: float = 0.0,
    prompt_weight: float = PROMPT_WEIGHT,
    max_len: int = 512,
    seed: int = 0,
    progress: bool = False,
    log: list | None = None,
) -> PerformerLM:
    """Fine-tune an existing Performer on ``documents``, in place; returns ``lm`` (in eval mode).

    The loss is training's: prompt tokens (and BOS) weighted ``prompt_weight``, the
    completion and EOS weighted 1. Batches of about ``batch_tokens`` tokens go through
    the documents in a fresh seeded shuffle per epoch; AdamW (betas 0.9/0.98), linear
    warm-up then cosine decay to ``min_lr_ratio * lr``, gradients clipped at norm 1.
    The prefix cache is cleared, since the weights changed. Save the result with
    ``lm.save_pretrained(dir)``.

    :param lm: the :class:`~llmppl.models.performer.PerformerLM` to train.
    :param documents: ``str`` documents (all of it a completion) or ``(prompt, completion)``
        pairs, e.g. ``("Q: 12+34\\nWork:", " 2+4=6 c0; 1+3+0=4 c0\\nA: 46\\n")``.
    :param int steps: optimiser steps.
    :param float lr: peak learning rate.
    :param int batch_tokens: tokens per batch (at least one document).
    :param int seed: the shuffle's seed.
    :param bool progress: a tqdm bar.
    :param list log: if given, one ``{"step", "loss", "lr"}`` per step is appended.
    :returns: ``lm``.

    >>> lm = PerformerLM(PerformerConfig.tiny())
    >>> docs = [("Q: 1+1\\nA:", " 2\\n")] * 4
    >>> before = document_loss(lm, docs)
    >>> fine_tune(lm, docs, steps=5, lr=1e-2, warmup=1) is lm, document_loss(lm, docs) < before
    (True, True)
    """
    from tqdm.auto import tqdm

    if not isinstance(lm, PerformerLM):
        raise TypeError(f"fine_tune: lm: expected a PerformerLM, got {type(lm).__name__}")
    for name, value in (("steps", steps), ("batch_tokens", batch_tokens), ("max_len", max_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"fine_tune: {name}: expected an int >= 1, got {value!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"fine_tune: lr: expected a float > 0, got {lr!r}")
    pairs = _as_pairs(documents, "fine_tune")
    if not pairs:
        raise ValueError("fine_tune: documents: expected at least one document, got none")
    encoded = _encode_all(lm, pairs, prompt_weight, max_len)
    device = next(lm.parameters()).device
    params = [p for p in lm.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.98),
    )
    schedule = argparse.Namespace(lr=lr, warmup=min(warmup, steps), steps=steps, min_lr_ratio=min_lr_ratio)
    rng = random.Random(f"finetune:{seed}")
    batches = iter(())
    lm.clear_prefix_cache()
    lm.train()
    bar = tqdm(total=steps, disable=not progress, dynamic_ncols=True, desc="fine-tune")
    try:
        for step in range(steps):
            batch = next(batches, None)
            if batch is None:  # a new epoch, a new shuffle
                batches = _document_batches(encoded, batch_tokens, rng)
                batch = next(batches)
            ids, w = _pad([encoded[i][0] for i in batch], [encoded[i][1] for i in batch], lm.tokenizer)
            ids, w = ids.to(device), w.to(device)
            rate = _lr(step, schedule)
            for g in opt.param_groups:
                g["lr"] = rate
            loss = _weighted_loss(lm, ids, w)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"fine_tune: non-finite loss at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            value = loss.item()
            if log is not None:
                log.append({"step": step + 1, "loss": value, "lr": rate})
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}")
    finally:
        bar.close()
        lm.eval()
        lm.clear_prefix_cache()
    return lm


def read_documents(path: str | os.PathLike) -> list:
    """Documents from a JSON-lines file: ``{"prompt", "completion"}`` -> a pair, ``{"text"}`` -> a ``str``.

    >>> import tempfile, json
    >>> with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
    ...     lines = [{"prompt": "Q: 1+1\\nA:", "completion": " 2\\n"}, {"text": "hi"}]
    ...     _ = f.write("\\n".join(json.dumps(x) for x in lines))
    >>> read_documents(f.name)
    [('Q: 1+1\\nA:', ' 2\\n'), 'hi']
    >>> os.remove(f.name)
    """
    docs: list = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"read_documents: {path} line {n}: expected UTF-8 text, got byte {raw[e.start]:#04x} "
                    f"at column {e.start + 1} ({e.reason})"
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"read_documents: {path} line {n}: expected a JSON object, got {line.strip()[:80]!r} "
                    f"({e.msg} at column {e.colno})"
                ) from None
            if isinstance(record, dict) and isinstance(record.get("text"), str):
                docs.append(record["text"])
            elif (
                isinstance(record, dict)
                and isinstance(record.get("prompt"), str)
                and isinstance(record.get("completion"), str)
            ):
                docs.append((record["prompt"], record["completion"]))
            else:
                raise ValueError(
                    f"read_documents: {path} line {n}: expected an object with 'text' or 'prompt' and 'completion' "
                    f"strings, got {line.strip()[:80]!r}"
                )
    if not docs:
        raise ValueError(f"read_documents: {path}: expected at least one document (a JSON line), got none")
    return docs


def build_finetune_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m llmppl.models.train finetune``.

    >>> build_finetune_parser().parse_args(["--init", "a", "--data", "d.jsonl", "--out", "b"]).steps
    200
    """
    p = argparse.ArgumentParser(
        prog="llmppl train finetune",
        description="Fine-tune a saved Performer on documents from a JSON-lines file and save it "
        '(config.json + model.safetensors). Each line: {"prompt": ..., "completion": ...} or {"text": ...}.',
    )
    p.add_argument("--init", default=None, help="checkpoint folder to start from (default: the shipped checkpoint)")
    p.add_argument("--data", required=True, help="JSON-lines file of documents")
    p.add_argument("--out", required=True, help="folder for the fine-tuned checkpoint")
    p.add_argument("--steps", type=_int_at_least(1), default=200, help="optimiser steps (default: 200)")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (default: 3e-4)")
    p.add_argument("--batch-tokens", type=_int_at_least(1), default=3072, help="tokens per batch (default: 3072)")
    p.add_argument("--warmup", type=_int_at_least(0), default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_int_at_least(1), default=1, help="torch CPU threads")
    p.add_argument("--device", type=_option_type(_check_device), default="cpu", help="cpu, or cuda (a CUDA GPU)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return p


def finetune_main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m llmppl.models.train finetune`` (and ``llmppl train finetune``).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     PerformerLM(PerformerConfig.tiny()).save_pretrained(f"{d}/init")
    ...     with open(f"{d}/docs.jsonl", "w") as f:
    ...         _ = f.write('{"text": "Q: 1+1\\\\nA: 2\\\\n"}\\n')
    ...     finetune_main(["--init", f"{d}/init", "--data", f"{d}/docs.jsonl", "--out", f"{d}/ft",
    ...                    "--steps", "1", "--no-progress"])  # doctest: +ELLIPSIS
    fine-tuned on 1 documents: loss ... -> ...; saved to .../ft
    0
    """
    from .pretrained import load_pretrained

    parser = build_finetune_parser()
    args = parser.parse_args(argv)
    try:
        documents = read_documents(args.data)
    except (OSError, ValueError) as e:
        parser.error(f"--data: {e}")
    torch.set_num_threads(args.threads)
    lm = load_pretrained(args.init, device=args.device)
    before = document_loss(lm, documents)
    t0 = time.time()
    fine_tune(
        lm,
        documents,
        steps=args.steps,
        lr=args.lr,
        batch_tokens=args.batch_tokens,
        warmup=args.warmup,
        seed=args.seed,
        progress=not args.no_progress,
    )
    after = document_loss(lm, documents)
    record = {
        "init": args.init or "shipped",
        "data": os.path.abspath(args.data),
        "documents": len(documents),
        "steps": args.steps,
        "lr": args.lr,
        "batch_tokens": args.batch_tokens,
        "seed": args.seed,
        "loss_before": round(before, 4),
        "loss_after": round(after, 4),
        "seconds": round(time.time() - t0, 1),
    }
    lm.save_pretrained(args.out, extra={"fine_tune": record})
    print(f"fine-tuned on {len(documents)} documents: loss {before:.3f} -> {after:.3f}; saved to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m llmppl.models.train`` and ``llmppl train``; ``finetune ...`` fine-tunes.

    Returns the exit status; a usage error exits with status 2 and names the option on stderr.

    >>> import contextlib, io
    >>> def usage_error(argv):
    ...     err = io.StringIO()
    ...     with contextlib.redirect_stderr(err):
    ...         try:
    ...             main(argv)
    ...         except SystemExit as stop:
    ...             return stop.code, err.getvalue().splitlines()[-1]
    >>> usage_error(["--out", "runs/x", "--steps", "0"])
    (2, 'llmppl train: error: argument --steps: expected an int >= 1, got 0')
    >>> usage_error(["finetune", "--out", "runs/ft"])
    (2, 'llmppl train finetune: error: the following arguments are required: --data')
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "finetune":
        return finetune_main(argv[1:])
    train(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
