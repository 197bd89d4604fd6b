"""The default language model used by ``LM(...)`` and ``NextToken(...)`` without ``model=``.

``use_model`` blocks nest and take precedence over ``set_default_model``; the lookup is
per thread/async context (a ``contextvars.ContextVar``).

>>> from llmppl.models import ToyLM
>>> lm = ToyLM()
>>> with use_model(lm):
...     get_default_model() is lm
True
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager

from llmppl.models.base import LanguageModel

__all__ = ["NoDefaultModelError", "check_model", "get_default_model", "set_default_model", "use_model"]

_GLOBAL: list[LanguageModel | None] = [None]
_SCOPED: contextvars.ContextVar[tuple[LanguageModel, ...]] = contextvars.ContextVar("llmppl_scoped_models", default=())


class NoDefaultModelError(RuntimeError):
    """Raised when a distribution needs a model and none was given or set.

    >>> issubclass(NoDefaultModelError, RuntimeError)
    True
    """


def check_model(model, where: str) -> LanguageModel:
    """``model`` if it is a :class:`~llmppl.models.base.LanguageModel`, else ``TypeError``.

    >>> check_model("gpt", "LM")
    Traceback (most recent call last):
    ...
    TypeError: LM: model: expected a llmppl LanguageModel (e.g. llmppl.load_pretrained()), got str
    """
    if not isinstance(model, LanguageModel):
        raise TypeError(
            f"{where}: model: expected a llmppl LanguageModel (e.g. llmppl.load_pretrained()), "
            f"got {type(model).__name__}"
        )
    return model


def set_default_model(model: LanguageModel | None) -> None:
    """Make ``model`` the default of every ``LM``/``NextToken`` without ``model=`` (``None`` clears it).

    >>> from llmppl.models import ToyLM
    >>> set_default_model(ToyLM()); set_default_model(None)
    """
    _GLOBAL[0] = None if model is None else check_model(model, "set_default_model")


@contextmanager
def use_model(model: LanguageModel):
    """Within the block, ``model`` is the default model (nests; restores on exit).

    >>> from llmppl.models import ToyLM
    >>> with use_model(ToyLM()) as lm:
    ...     type(lm).__name__
    'ToyLM'
    """
    check_model(model, "use_model")
    token = _SCOPED.set((*_SCOPED.get(), model))
    try:
        yield model
    finally:
        _SCOPED.reset(token)


def get_default_model(*, required: bool = True) -> LanguageModel | None:
    """The innermost ``use_model`` model, else the ``set_default_model`` one.

    :param bool required: raise :class:`NoDefaultModelError` when there is none (else return ``None``).

    >>> get_default_model(required=False) is None
    True
    """
    scoped = _SCOPED.get()
    model = scoped[-1] if scoped else _GLOBAL[0]
    if model is None and required:
        raise NoDefaultModelError(
            "no language model: pass model=... to LM/NextToken, call llmppl.set_default_model(lm), "
            "or run inside `with llmppl.use_model(lm):`"
        )
    return model
