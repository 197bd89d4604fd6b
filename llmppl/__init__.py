"""llmppl: language-model calls as Pyro distributions over strings.

>>> import llmppl
>>> llmppl.__version__
'0.1.0'
"""

__version__ = "0.1.0"

from . import ops

__all__ = ["__version__", "ops"]
