"""Build and load the C++/CUDA kernels of :mod:`llmppl.ops`.

The kernels are compiled on first use with :func:`torch.utils.cpp_extension.load`
(ninja, cached under ``$LLMPPL_EXTENSIONS_DIR`` or torch's extension cache, rebuilt
when a source changes) and register their ops with ``TORCH_LIBRARY`` as
``torch.ops.llmppl.*``. The CUDA kernels are included when ``nvcc`` and a CUDA build
of torch are both present. Where no compiler works, :func:`load` warns once and the
ops fall back to the pure-PyTorch reference.

Set ``LLMPPL_NO_EXTENSION=1`` to skip the build and use the reference.
"""

from __future__ import annotations

import os
import pathlib
import threading
import warnings

import torch

__all__ = ["available", "has_cuda_kernels", "load", "sources"]

_CSRC = pathlib.Path(__file__).parent / "csrc"
_lock = threading.Lock()
_state: dict = {}


def sources(with_cuda: bool) -> list[str]:
    """The source files of the extension: the schemas, the CPU kernels and, optionally, CUDA.

    >>> any(s.endswith("favor.cpp") for s in sources(with_cuda=False))
    True
    """
    files = [_CSRC / "favor.cpp", *sorted((_CSRC / "cpu").glob("*.cpp"))]
    if with_cuda:
        files += sorted((_CSRC / "cuda").glob("*.cu"))
    return [str(f) for f in files]


def _want_cuda() -> bool:
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.version.cuda is not None and CUDA_HOME is not None and torch.cuda.is_available()


def load(verbose: bool = False) -> bool:
    """Compile (once) and load the kernels; returns whether they are available.

    >>> isinstance(load(), bool)
    True
    """
    ok = _state.get("ok")
    if ok is not None:  # the common path; lock-free so torch.compile can trace it
        return ok
    with _lock:
        if "ok" in _state:
            return _state["ok"]
        if os.environ.get("LLMPPL_NO_EXTENSION"):
            _state.update(ok=False, cuda=False)
            return False
        with_cuda = _want_cuda()
        try:
            from torch.utils.cpp_extension import load as _load

            build_dir = os.environ.get("LLMPPL_EXTENSIONS_DIR")
            if build_dir:
                os.makedirs(build_dir, exist_ok=True)
            _load(
                name="llmppl_favor_cuda" if with_cuda else "llmppl_favor",
                sources=sources(with_cuda),
                extra_cflags=["-O3"],
                extra_cuda_cflags=["-O3"] if with_cuda else None,
                build_directory=build_dir,
                is_python_module=False,
                verbose=verbose,
            )
            from . import _meta

            _meta.register()
            _state.update(ok=True, cuda=with_cuda)
        except Exception as err:
            warnings.warn(
                f"llmppl: could not build the FAVOR+ C++ extension ({type(err).__name__}: "
                f"{str(err).strip().splitlines()[-1] if str(err).strip() else err}); "
                "using the pure-PyTorch reference ops, which are slower. "
                "Install a C++ compiler and ninja (pip install ninja) to build it.",
                RuntimeWarning,
                stacklevel=2,
            )
            _state.update(ok=False, cuda=False)
        return _state["ok"]


def available() -> bool:
    """Whether the compiled kernels are loaded (building them on first call).

    >>> available() in (True, False)
    True
    """
    return load()


def has_cuda_kernels() -> bool:
    """Whether the loaded extension includes the CUDA kernels.

    >>> has_cuda_kernels() in (True, False)
    True
    """
    return load() and _state["cuda"]
