r"""The training corpus: deterministic, seeded generators of the task formats the cascades use.

Every problem has a *key* (for addition, the operand pair); a stable hash of the key puts
it in the held-out split or the training split, so the two never overlap whatever the
seed. :func:`sample_problem` draws from either split; every problem is a
:class:`Problem` with the full training ``text``, the ``prompt`` a cascade would send
and the ``target`` greedy decoding must produce.

Formats (the arithmetic ones are a contract; every line ends with ``\n``):

- ``direct``: ``Q: 4721+385\nA: 5106\n``
- ``scratchpad``: ``Q: 4721+385\nWork: 1+5=6 c0; 2+8+0=10 c1; 7+3+1=11 c1; 4+0+1=5 c0\nA: 5106\n``
  (digit by digit from the least significant; the first step has no carry in; a missing
  digit of the shorter operand is ``0``)
- ``verifier``: ``Verify: 4721+385\nWork: ...\nA: 5106\nOK: yes\n``; half the cases are
  ``no`` with exactly one corruption: a wrong step sum, a wrong carry out, a wrong answer,
  or (two times in five) a step that misreads an operand digit, two adjacent digits swapped
  or one digit replaced, with the rest of the work and the answer following from it
  consistently. That last kind is the error a scratchpad sampled from the model makes
  (35 of 36 wrong 5-digit scratchpads of the step-10400 checkpoint), and only a verifier
  that checks the steps against the question catches it.
- ``calculator`` (tool use): ``Q: <a word problem>\nCall: calc(<expr>)\nResult: <value>\nA: <value>\n``;
  the model writes the ``Call`` line, a program writes the ``Result`` line
  (:func:`calculator`), the model answers from it.
- ``selection_inference`` over small rule sets::

      Facts: Ann is red. Bob is big. Ann is cold.
      Rules: If red then kind. If kind and cold then happy.
      Question: Is Ann happy?
      Select: Ann is red. If red then kind.
      Infer: Ann is kind.
      Select: Ann is kind. Ann is cold. If kind and cold then happy.
      Infer: Ann is happy.
      A: yes

  Each step applies the first rule (in the listed order) whose premises hold for the
  asked person and whose conclusion is new; the answer is ``no`` when no rule applies.
- ``twenty_answerer``: ``Object: penguin. Q: Can it fly? A: no\n`` over :data:`KNOWLEDGE_BASE`,
  balanced yes/no.
- ``twenty_questioner``: ``Twenty questions.\nQ: Is it an animal? A: yes\n...\nGuess: penguin\n``;
  the questioner asks the attribute that splits the remaining candidates most evenly.

The knowledge base is memorised, so the answerer's held-out split is by *phrasing*: each
attribute has three phrasings and for each (object, attribute) pair one phrasing is held
out; a held-out question was never seen for that object, but the fact was. Training also
asks every fact in three more phrasings per attribute that are never held out (half the
training questions): with more paraphrases of each fact, a small model's answers carry
over to the held-out phrasing far better (``benchmarks/answerer_probe.py``).

Where the split is weaker than "never overlaps" (kept as is: the shipped checkpoint was
trained on these generators and its held-out figures are measured on these test sets):

- a held-out answerer question can still appear in a *questioner* training game for that
  object, in the other direction (``Q: Do you keep it at home? A: yes ... Guess: lamp``):
  the questioner asks in the first phrasing, which is the held-out one for a third of the
  facts;
- the questioner's split is by the hidden object and the whole opening, but its prompt
  does not show the object, so most held-out (prompt, first move) pairs also occur in
  training (the short openings are few); its row measures imitation of the policy, not
  generalisation.

A calculator ``+`` call in training never uses a held-out addition pair.

>>> p = sample_problem("scratchpad", split="train", seed=0, index=0)
>>> p.text.startswith("Q: ") and p.text.endswith(p.target + "\n")
True
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field

__all__ = [
    "KNOWLEDGE_BASE",
    "TASKS",
    "Problem",
    "addition_work",
    "calculator",
    "check_selection_step",
    "is_held_out",
    "mixture",
    "parse_addition_work",
    "sample_problem",
]

HELD_OUT_FRACTION = 16  # one key in 16 is held out


def is_held_out(key: str) -> bool:
    """Whether a problem key belongs to the held-out split (a stable hash, seed-independent).

    >>> is_held_out("4721+385") == is_held_out("4721+385")
    True
    """
    return hashlib.blake2b(key.encode(), digest_size=4).digest()[0] % HELD_OUT_FRACTION == 0


@dataclass(frozen=True)
class Problem:
    """One problem of one task.

    :ivar str task: the task name.
    :ivar str text: the full training document.
    :ivar str prompt: what a cascade sends (a prefix of ``text``).
    :ivar str target: what greedy decoding must produce after ``prompt`` (up to the newline).
    :ivar dict meta: task-specific data (operands, label, ...).

    >>> sample_problem("direct", split="test", seed=0, index=0).prompt.endswith("\\nA:")
    True
    """

    task: str
    text: str
    prompt: str
    target: str
    meta: dict = field(default_factory=dict, compare=False)


# ---------------------------------------------------------------- addition


def addition_work(a: int, b: int) -> str:
    """The scratchpad of ``a+b``: ``x+y(+carry)=s c<carry out>`` steps from the least significant digit.

    >>> addition_work(4721, 385)
    '1+5=6 c0; 2+8+0=10 c1; 7+3+1=11 c1; 4+0+1=5 c0'
    """
    if a < 0 or b < 0:
        raise ValueError(f"addition_work: expected non-negative operands, got {a}, {b}")
    return _work_of_digits(*_digit_columns(a, b))[0]


def _digit_columns(a: int, b: int) -> tuple[list[int], list[int]]:
    """The operands' digits from the least significant, the shorter one padded with 0."""
    da, db = str(a)[::-1], str(b)[::-1]
    n = max(len(da), len(db))
    return [int(da[i]) if i < len(da) else 0 for i in range(n)], [int(db[i]) if i < len(db) else 0 for i in range(n)]


def _work_of_digits(xs: list[int], ys: list[int]) -> tuple[str, str]:
    """The scratchpad and the answer that follow from these digit columns (least significant first)."""
    steps, carry, out = [], None, []
    for x, y in zip(xs, ys, strict=True):
        s = x + y + (carry or 0)
        head = f"{x}+{y}" if carry is None else f"{x}+{y}+{carry}"
        carry = s // 10
        steps.append(f"{head}={s} c{carry}")
        out.append(str(s % 10))
    answer = str(int(("1" if carry else "") + "".join(reversed(out))))
    return "; ".join(steps), answer


_STEP = re.compile(r"^(\d)\+(\d)(?:\+(\d))?=(\d+) c(\d)$")


def parse_addition_work(work: str) -> list[tuple[int, int, int | None, int, int]]:
    """The steps ``(x, y, carry_in, s, carry_out)`` of a scratchpad; ``ValueError`` if malformed.

    >>> parse_addition_work("1+5=6 c0; 2+8+0=10 c1")
    [(1, 5, None, 6, 0), (2, 8, 0, 10, 1)]
    """
    out = []
    for part in work.strip().split("; "):
        m = _STEP.match(part)
        if not m:
            raise ValueError(f"parse_addition_work: expected steps like '2+8+0=10 c1', got {part!r}")
        x, y, c, s, co = m.groups()
        out.append((int(x), int(y), None if c is None else int(c), int(s), int(co)))
    return out


def _operand_lengths(rng: random.Random, max_digits: int) -> tuple[int, int]:
    la = rng.randint(1, max_digits)
    # half the time equal lengths (the evaluated case), else independent
    lb = la if rng.random() < 0.5 else rng.randint(1, max_digits)
    return (la, lb) if rng.random() < 0.5 else (lb, la)


def _number(rng: random.Random, digits: int) -> int:
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def _addition_operands(rng, split, digits, max_digits=6):
    for _ in range(1000):
        if digits is None:
            la, lb = _operand_lengths(rng, max_digits)
        else:
            la, lb = (digits, digits) if isinstance(digits, int) else digits
        a, b = _number(rng, la), _number(rng, lb)
        if is_held_out(f"{a}+{b}") == (split == "test"):
            return a, b
    raise RuntimeError("could not draw operands of the requested split")  # pragma: no cover


def _direct(rng, split, digits=None):
    a, b = _addition_operands(rng, split, digits)
    prompt = f"Q: {a}+{b}\nA:"
    return Problem("direct", f"{prompt} {a + b}\n", prompt, str(a + b), {"a": a, "b": b})


def _scratchpad(rng, split, digits=None):
    a, b = _addition_operands(rng, split, digits)
    prompt = f"Q: {a}+{b}\nWork:"
    text = f"{prompt} {addition_work(a, b)}\nA: {a + b}\n"
    return Problem("scratchpad", text, prompt, str(a + b), {"a": a, "b": b})


def _corrupt(rng: random.Random, a: int, b: int) -> tuple[str, str, str]:
    """A worked solution of ``a+b`` with exactly one corruption: (work, answer, kind)."""
    steps = addition_work(a, b).split("; ")
    answer = str(a + b)
    kind = rng.choice(["step", "carry", "answer", "operand", "operand"])
    if kind == "operand":
        xs, ys = _digit_columns(a, b)
        digits = rng.choice([xs, ys])
        swaps = [j for j in range(len(digits) - 1) if digits[j] != digits[j + 1]]
        if swaps and rng.random() < 0.5:  # two adjacent digits read in each other's place
            j = rng.choice(swaps)
            digits[j], digits[j + 1] = digits[j + 1], digits[j]
        else:
            j = rng.randrange(len(digits))
            digits[j] = rng.choice([d for d in range(10) if d != digits[j]])
        work, answer = _work_of_digits(xs, ys)
        return work, answer, kind
    i = rng.randrange(len(steps))
    head, tail = steps[i].split("=")
    s, c = tail.split(" c")
    if kind == "step":
        s_new = int(s)
        while s_new == int(s):
            s_new = max(0, int(s) + rng.choice([-2, -1, 1, 2, 10, -10]))
        steps[i] = f"{head}={s_new} c{c}"
    elif kind == "carry":
        steps[i] = f"{head}={s} c{1 - int(c)}"
    else:
        digits = list(answer)
        j = rng.randrange(len(digits))
        choices = [d for d in "0123456789" if d != digits[j] and not (j == 0 and d == "0" and len(digits) > 1)]
        digits[j] = rng.choice(choices)
        answer = "".join(digits)
    return "; ".join(steps), answer, kind


def _verifier(rng, split, digits=None, label=None):
    a, b = _addition_operands(rng, split, digits)
    ok = rng.random() < 0.5 if label is None else label
    if ok:
        work, answer, kind = addition_work(a, b), str(a + b), "none"
    else:
        work, answer, kind = _corrupt(rng, a, b)
    prompt = f"Verify: {a}+{b}\nWork: {work}\nA: {answer}\nOK:"
    target = "yes" if ok else "no"
    return Problem("verifier", f"{prompt} {target}\n", prompt, target, {"a": a, "b": b, "corruption": kind})


# ---------------------------------------------------------------- calculator (tool use)

_CALC_TEMPLATES = [
    ("What is {a} plus {b}?", "+"),
    ("What is {a} minus {b}?", "-"),
    ("What is {a} times {b}?", "*"),
    ("{n} has {a} apples and gets {b} more. How many apples does {n} have?", "+"),
    ("{n} had {a} coins and spent {b}. How many coins are left?", "-"),
    ("There are {a} boxes with {b} pens each. How many pens are there?", "*"),
    ("A train carries {a} people and {b} more get on. How many people are on the train?", "+"),
    ("Add {a} and {b}.", "+"),
    ("Subtract {b} from {a}.", "-"),
    ("Multiply {a} by {b}.", "*"),
]
_NAMES = ["Ann", "Bob", "Cat", "Dan", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jo"]


def calculator(expr: str) -> str:
    """The tool: evaluate ``<int><op><int>`` with ``op`` in ``+-*``; ``"error"`` otherwise.

    >>> calculator("12*3"), calculator("7-9"), calculator("import os")
    ('36', '-2', 'error')
    """
    m = re.fullmatch(r"\s*(\d{1,12})\s*([+\-*])\s*(\d{1,12})\s*", expr)
    if not m:
        return "error"
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    return str(a + b if op == "+" else a - b if op == "-" else a * b)


def _calculator(rng, split, digits=None):
    for _ in range(1000):
        t = rng.randrange(len(_CALC_TEMPLATES))
        template, op = _CALC_TEMPLATES[t]
        big = 3 if op == "*" else 6
        a, b = _number(rng, rng.randint(1, big)), _number(rng, rng.randint(1, big))
        if op == "-" and b > a and rng.random() < 0.8:
            a, b = b, a
        n = rng.choice(_NAMES)
        # a held-out addition stays out of training here too (as a call and its result)
        leaks = split == "train" and op == "+" and is_held_out(f"{a}+{b}")
        if is_held_out(f"calc:{t}:{a}{op}{b}") == (split == "test") and not leaks:
            break
    question = template.format(a=a, b=b, n=n)
    expr = f"{a}{op}{b}"
    result = calculator(expr)
    prompt = f"Q: {question}\nCall:"
    text = f"{prompt} calc({expr})\nResult: {result}\nA: {result}\n"
    return Problem("calculator", text, prompt, f"calc({expr})", {"expr": expr, "result": result})


# ---------------------------------------------------------------- selection-inference

_PEOPLE = ["Ann", "Bob", "Cat", "Dan", "Eve", "Fay"]
_ATTRS = ["red", "big", "cold", "kind", "happy", "round", "young", "rough", "smart", "quiet", "green", "nice"]


def _rule_text(premises, conclusion) -> str:
    return f"If {' and '.join(premises)} then {conclusion}."


def _si_steps(facts, rules, person, goal):
    """The gold steps: (selected facts, rule, new fact) until the goal holds or nothing applies."""
    known = {a for p, a in facts if p == person}
    steps = []
    while goal not in known:
        for premises, conclusion in rules:
            if conclusion not in known and all(x in known for x in premises):
                steps.append(([f"{person} is {x}." for x in premises], _rule_text(premises, conclusion), conclusion))
                known.add(conclusion)
                break
        else:
            break
    return steps, goal in known


def _si_instance(rng: random.Random):
    person = rng.choice(_PEOPLE)
    attrs = rng.sample(_ATTRS, 8)
    depth = rng.randint(1, 3)
    # a chain base -> ... -> goal (some rules with two premises)
    base = [attrs[0]]
    facts = {(person, attrs[0])}
    rules, chain_attr, nxt = [], attrs[0], 1
    for _ in range(depth):
        new = attrs[nxt]
        nxt += 1
        if rng.random() < 0.4:
            extra = attrs[nxt]
            nxt += 1
            facts.add((person, extra))
            base.append(extra)
            premises = [chain_attr, extra] if rng.random() < 0.5 else [extra, chain_attr]
        else:
            premises = [chain_attr]
        rules.append((premises, new))
        chain_attr = new
    goal = chain_attr
    # distractors: facts about others, a rule that does not fire
    others = [p for p in _PEOPLE if p != person]
    for _ in range(rng.randint(1, 2)):
        facts.add((rng.choice(others), rng.choice(attrs)))
    spare = [a for a in attrs if a not in {x for r in rules for x in r[0]} | {r[1] for r in rules}]
    if spare and rng.random() < 0.7:
        rules.append(([rng.choice(spare)], rng.choice(attrs[:nxt])))
    if rng.random() < 0.5:  # a "no" case: drop one base fact so the chain breaks
        facts.discard((person, rng.choice(base)))
    facts = sorted(facts)
    rng.shuffle(facts)
    rng.shuffle(rules)
    return person, facts, rules, goal


def _selection_inference(rng, split, digits=None):
    for _ in range(1000):
        person, facts, rules, goal = _si_instance(rng)
        fact_text = " ".join(f"{p} is {a}." for p, a in facts)
        rule_text = " ".join(_rule_text(p, c) for p, c in rules)
        if is_held_out(f"si:{fact_text}|{rule_text}|{person}|{goal}") == (split == "test"):
            break
    steps, answer = _si_steps(facts, rules, person, goal)
    prompt = f"Facts: {fact_text}\nRules: {rule_text}\nQuestion: Is {person} {goal}?\n"
    body = "".join(f"Select: {' '.join([*sel, rule])}\nInfer: {person} is {new}.\n" for sel, rule, new in steps)
    text = f"{prompt}{body}A: {'yes' if answer else 'no'}\n"
    meta = {"person": person, "facts": facts, "rules": rules, "goal": goal, "steps": steps}
    return Problem("selection_inference", text, prompt, "yes" if answer else "no", meta)


def check_selection_step(problem: Problem, known: list[str], selection: str, inference: str) -> bool:
    """Whether one Select/Infer step is valid given the facts ``known`` so far.

    Valid: every selected fact is a known fact about the asked person, the selected rule
    is one of the problem's rules, its premises are exactly the selected facts, and the
    inferred fact is its conclusion for that person.

    :param Problem problem: a ``selection_inference`` problem.
    :param list known: sentences like ``"Ann is red."`` known before the step.
    :param str selection: the text after ``Select:``.
    :param str inference: the text after ``Infer:``.

    >>> p = sample_problem("selection_inference", split="test", seed=0, index=0)
    >>> sel, rule, new = p.meta["steps"][0] if p.meta["steps"] else ([], "", "")
    >>> not p.meta["steps"] or check_selection_step(p, [f"{a} is {b}." for a, b in p.meta["facts"]],
    ...     " ".join([*sel, rule]), f"{p.meta['person']} is {new}.")
    True
    """
    person = problem.meta["person"]
    sentences = [s.strip() + "." for s in selection.strip().split(".") if s.strip()]
    rules = [s for s in sentences if s.startswith("If ")]
    selected = [s for s in sentences if not s.startswith("If ")]
    if len(rules) != 1:
        return False
    for premises, conclusion in problem.meta["rules"]:
        if _rule_text(premises, conclusion) == rules[0]:
            wanted = [f"{person} is {x}." for x in premises]
            return (
                sorted(selected) == sorted(wanted)
                and all(s in known for s in selected)
                and inference.strip() == f"{person} is {conclusion}."
            )
    return False


# ---------------------------------------------------------------- twenty questions

_QUESTIONS = {  # attribute -> three phrasings
    "animal": ["Is it an animal?", "Is it a living animal?", "Is it a kind of animal?"],
    "fly": ["Can it fly?", "Does it fly?", "Is it able to fly?"],
    "water": ["Does it live in water?", "Is it found in water?", "Does it live in the water?"],
    "big": ["Is it bigger than a person?", "Is it larger than a person?", "Is it big?"],
    "eat": ["Can you eat it?", "Is it edible?", "Can people eat it?"],
    "metal": ["Is it made of metal?", "Is it metal?", "Is it made from metal?"],
    "electric": ["Does it use electricity?", "Is it electric?", "Does it need power?"],
    "legs": ["Does it have legs?", "Has it got legs?", "Does it walk on legs?"],
    "wheels": ["Does it have wheels?", "Has it got wheels?", "Does it move on wheels?"],
    "plant": ["Is it a plant?", "Does it grow in soil?", "Is it a kind of plant?"],
    "pet": ["Is it a pet?", "Do people keep it as a pet?", "Can it be a pet?"],
    "home": ["Is it found in a home?", "Do you keep it at home?", "Is it in most homes?"],
    "fur": ["Does it have fur?", "Is it furry?", "Is it covered in fur?"],
    "tiny": ["Is it smaller than a mouse?", "Is it tiny?", "Is it very small?"],
    "air": ["Does it breathe air?", "Does it need air to breathe?", "Does it breathe air to live?"],
    "screen": ["Does it have a screen?", "Has it got a screen?", "Does it show pictures on a screen?"],
    "bark": ["Does it bark?", "Can it bark?", "Does it make a barking sound?"],
    "root": ["Does it grow underground?", "Is it a root?", "Does it grow under the ground?"],
}
_ATTR_ORDER = list(_QUESTIONS)
_MORE_QUESTIONS = {  # attribute -> three more phrasings, trained for every object, never held out
    "animal": ["Is it a creature?", "Is it some animal?", "Would you call it an animal?"],
    "fly": ["Can it go up in the air?", "Does it fly around?", "Can it fly high?"],
    "water": ["Is its home in water?", "Does it swim in water?", "Is it at home in the water?"],
    "big": ["Is it huge?", "Is it larger than a man?", "Is it very big?"],
    "eat": ["Do people eat it?", "Is it a food?", "Can it be eaten?"],
    "metal": ["Is it metallic?", "Is it built of metal?", "Is there metal in it?"],
    "electric": ["Does it run on electricity?", "Does it need electric power?", "Do you plug it in?"],
    "legs": ["Does it stand on legs?", "Has it legs?", "Does it have any legs?"],
    "wheels": ["Does it roll on wheels?", "Has it wheels?", "Does it have any wheels?"],
    "plant": ["Is it a green plant?", "Does it grow from a seed?", "Is it some kind of plant?"],
    "pet": ["Is it kept as a pet?", "Could you have it as a pet?", "Is it a house pet?"],
    "home": ["Is it in a home?", "Would you find it at home?", "Is it found in houses?"],
    "fur": ["Has it got fur?", "Is it hairy?", "Does it have a furry coat?"],
    "tiny": ["Is it really small?", "Is it smaller than a mouse is?", "Is it very tiny?"],
    "air": ["Does it need air?", "Does it breathe?", "Must it breathe air?"],
    "screen": ["Has it a screen?", "Is there a screen on it?", "Does it have a display screen?"],
    "bark": ["Does it ever bark?", "Can it make a bark?", "Is it known to bark?"],
    "root": ["Does it grow below ground?", "Is it a root vegetable?", "Does it grow in the ground?"],
}
_OBJECTS = {  # object -> attributes that hold (others do not); every object distinguishable
    "penguin": {"animal", "water", "eat", "legs", "air"},
    "eagle": {"animal", "fly", "legs", "air"},
    "dog": {"animal", "legs", "pet", "home", "fur", "air", "bark"},
    "cat": {"animal", "legs", "pet", "home", "fur", "air"},
    "goldfish": {"animal", "water", "pet", "home", "tiny"},
    "shark": {"animal", "water", "big"},
    "whale": {"animal", "water", "big", "air"},
    "elephant": {"animal", "big", "legs", "air"},
    "horse": {"animal", "big", "legs", "fur", "air"},
    "cow": {"animal", "big", "legs", "eat", "fur", "air"},
    "chicken": {"animal", "legs", "eat", "air"},
    "bee": {"animal", "fly", "legs", "tiny", "air"},
    "parrot": {"animal", "fly", "legs", "pet", "home", "air"},
    "frog": {"animal", "water", "legs", "air"},
    "salmon": {"animal", "water", "eat"},
    "snake": {"animal", "air"},
    "apple": {"eat", "plant"},
    "carrot": {"eat", "plant", "root"},
    "oak tree": {"plant", "big"},
    "rose": {"plant"},
    "cactus": {"plant", "home"},
    "seaweed": {"plant", "water", "eat"},
    "car": {"metal", "wheels", "big", "electric"},
    "bicycle": {"metal", "wheels"},
    "airplane": {"metal", "fly", "big", "wheels", "electric"},
    "boat": {"water", "big"},
    "submarine": {"metal", "water", "big", "electric"},
    "spoon": {"metal", "home", "tiny"},
    "lamp": {"electric", "home"},
    "television": {"electric", "home", "screen"},
    "chair": {"legs", "home"},
    "table": {"legs", "home", "big"},
    "bread": {"eat", "home"},
    "drone": {"fly", "electric", "metal"},
    "robot": {"metal", "electric", "legs"},
    "skateboard": {"wheels"},
}
KNOWLEDGE_BASE: dict[str, dict[str, bool]] = {
    obj: {a: a in attrs for a in _ATTR_ORDER} for obj, attrs in _OBJECTS.items()
}


def _held_out_phrasing(obj: str, attr: str) -> int:
    return hashlib.blake2b(f"20q:{obj}:{attr}".encode(), digest_size=4).digest()[0] % 3


def _twenty_answerer(rng, split, digits=None, label=None):
    # balanced yes/no, as a game's questions are (the questioner splits the candidates
    # evenly): drawn uniformly, 82 % of (object, attribute) pairs are "no", and a model
    # that answers "no" to any phrasing it has not seen for the object scores as much
    obj = rng.choice(list(KNOWLEDGE_BASE))
    yes = rng.random() < 0.5 if label is None else label
    attr = rng.choice([a for a in _ATTR_ORDER if KNOWLEDGE_BASE[obj][a] == yes])
    held = _held_out_phrasing(obj, attr)
    if split == "test":
        question = _QUESTIONS[attr][held]
    elif rng.random() < 0.5:
        question = _QUESTIONS[attr][rng.choice([i for i in range(3) if i != held])]
    else:
        question = rng.choice(_MORE_QUESTIONS[attr])
    answer = "yes" if KNOWLEDGE_BASE[obj][attr] else "no"
    prompt = f"Object: {obj}. Q: {question} A:"
    return Problem("twenty_answerer", f"{prompt} {answer}\n", prompt, answer, {"object": obj, "attribute": attr})


def held_out_facts() -> list[Problem]:
    """Every held-out answerer problem once: each (object, attribute) pair in its held-out phrasing.

    >>> facts = held_out_facts()
    >>> len(facts) == len(KNOWLEDGE_BASE) * len(_ATTR_ORDER), facts[0].task
    (True, 'twenty_answerer')
    """
    out = []
    for obj, attrs in KNOWLEDGE_BASE.items():
        for attr in _ATTR_ORDER:
            question = _QUESTIONS[attr][_held_out_phrasing(obj, attr)]
            answer = "yes" if attrs[attr] else "no"
            prompt = f"Object: {obj}. Q: {question} A:"
            meta = {"object": obj, "attribute": attr}
            out.append(Problem("twenty_answerer", f"{prompt} {answer}\n", prompt, answer, meta))
    return out


def questioner_policy(history: list[tuple[str, bool]]) -> tuple[str, str]:
    """The questioner's next move given ``(attribute, answer)`` pairs: ``("ask", attr)`` or ``("guess", obj)``.

    >>> questioner_policy([])[0]
    'ask'
    """
    cands = [o for o in KNOWLEDGE_BASE if all(KNOWLEDGE_BASE[o][a] == ans for a, ans in history)]
    asked = {a for a, _ in history}
    best, best_split = None, 0
    for a in _ATTR_ORDER:
        if a in asked:
            continue
        yes = sum(KNOWLEDGE_BASE[o][a] for o in cands)
        split = min(yes, len(cands) - yes)
        if split > best_split:
            best, best_split = a, split
    if best is None or len(cands) <= 1:
        return "guess", (cands[0] if cands else "nothing")
    return "ask", best


def _twenty_questioner(rng, split, digits=None):
    objs = list(KNOWLEDGE_BASE)
    # a game may start after 0-3 questions someone else asked (any phrasing); the policy
    # then asks in the first (canonical) phrasing. The split is by the object and the whole
    # opening (see the module docstring for what that does not keep apart).
    for _ in range(1000):
        obj = rng.choice(objs)
        opening = rng.sample(_ATTR_ORDER, rng.choice([0, 0, 1, 2, 3]))
        phrasings = [rng.randrange(3) for _ in opening]
        key = f"20qq:{obj}:{opening}:{phrasings}"
        if is_held_out(key) == (split == "test"):
            break
    history, lines = [], ["Twenty questions."]
    for attr, k in zip(opening, phrasings, strict=True):
        ans = KNOWLEDGE_BASE[obj][attr]
        lines.append(f"Q: {_QUESTIONS[attr][k]} A: {'yes' if ans else 'no'}")
        history.append((attr, ans))
    prompt = "\n".join(lines) + "\n"
    first = None
    while True:
        move, what = questioner_policy(history)
        if move == "guess":
            lines.append(f"Guess: {what}")
            first = first or f"Guess: {what}"
            break
        ans = KNOWLEDGE_BASE[obj][what]
        first = first or f"Q: {_QUESTIONS[what][0]}"
        lines.append(f"Q: {_QUESTIONS[what][0]} A: {'yes' if ans else 'no'}")
        history.append((what, ans))
    text = "\n".join(lines) + "\n"
    return Problem("twenty_questioner", text, prompt, first, {"object": obj, "history": history})


_GENERATORS = {
    "direct": _direct,
    "scratchpad": _scratchpad,
    "verifier": _verifier,
    "calculator": _calculator,
    "selection_inference": _selection_inference,
    "twenty_answerer": _twenty_answerer,
    "twenty_questioner": _twenty_questioner,
}
TASKS = tuple(_GENERATORS)


def sample_problem(task: str, *, split: str, seed: int, index: int, **kwargs) -> Problem:
    """Problem number ``index`` of ``task`` in ``split`` for ``seed``: a pure function of its arguments.

    :param str task: one of :data:`TASKS`.
    :param str split: ``"train"`` or ``"test"`` (held out).
    :param int seed: the stream's seed.
    :param int index: the problem's number in the stream.
    :param kwargs: task options: ``digits`` (an int, or a pair of operand lengths) for
        the addition tasks, ``label`` (bool) for the verifier and the twenty-questions answerer.

    >>> sample_problem("direct", split="test", seed=1, index=3, digits=2).meta["a"] >= 10
    True
    """
    if task not in _GENERATORS:
        raise ValueError(f"sample_problem: expected task in {TASKS}, got {task!r}")
    if split not in ("train", "test"):
        raise ValueError(f"sample_problem: expected split 'train' or 'test', got {split!r}")
    rng = random.Random(f"{task}:{split}:{seed}:{index}")
    return _GENERATORS[task](rng, split, **kwargs)


DEFAULT_WEIGHTS = {
    "scratchpad": 0.30,
    "direct": 0.10,
    "verifier": 0.20,
    "calculator": 0.08,
    "selection_inference": 0.14,
    "twenty_answerer": 0.10,
    "twenty_questioner": 0.08,
}


def mixture(weights: dict[str, float] | None = None, *, seed: int = 0, split: str = "train"):
    """An endless, deterministic stream of ``Problem`` drawn from ``weights`` (task -> weight).

    >>> stream = mixture(seed=0)
    >>> next(stream).task in TASKS
    True
    """
    weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
    bad = [t for t in weights if t not in _GENERATORS]
    if bad:
        raise ValueError(f"mixture: expected tasks in {TASKS}, got {bad}")
    tasks, w = list(weights), list(weights.values())
    rng = random.Random(f"mixture:{seed}")
    index = 0
    while True:
        task = rng.choices(tasks, w)[0]
        yield sample_problem(task, split=split, seed=seed, index=index)
        index += 1
