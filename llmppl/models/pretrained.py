"""The shipped Performer checkpoint: :func:`load_pretrained`.

The weights in ``llmppl/models/weights/`` (``config.json`` + ``model.safetensors``) were
produced by ``python -m llmppl.models.train``; ``config.json`` records the command,
the step and the training time.

>>> import os
>>> os.path.basename(WEIGHTS_DIR)
'weights'
"""

from __future__ import annotations

import os

import torch

from .performer import CONFIG_NAME, PerformerLM

__all__ = ["WEIGHTS_DIR", "load_pretrained"]

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")


def load_pretrained(path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu") -> PerformerLM:
    """Load the shipped Performer language model (or the checkpoint folder ``path``), in eval mode.

    :param path: a folder written by :meth:`PerformerLM.save_pretrained`; default: the
        checkpoint shipped in the package.
    :param device: where to put the weights.
    :returns: :class:`~llmppl.models.performer.PerformerLM`.

    >>> lm = load_pretrained()
    >>> lm.config.n_layers, lm.tokenizer.vocab_size
    (4, 259)
    """
    directory = WEIGHTS_DIR if path is None else os.fspath(path)
    if not os.path.exists(os.path.join(directory, CONFIG_NAME)):
        raise FileNotFoundError(
            f"load_pretrained: expected a checkpoint (config.json, model.safetensors) in {directory}; "
            "train one with `python -m llmppl.models.train --out runs/performer` and pass its 'final' folder"
        )
    return PerformerLM.from_pretrained(directory, map_location=device).to(device)
