"""FAVOR+ attention ops (layer L0): random features, linear attention, the recurrent step.

The causal op and the feature map run as C++ (CPU) and CUDA kernels registered with
``TORCH_LIBRARY`` as ``torch.ops.llmppl.*``, built on first use; a pure-PyTorch
reference of every op lives in :mod:`llmppl.ops._reference` and is used where the
extension cannot be built.

>>> import torch
>>> from llmppl.ops import favor_attention, orthogonal_random_features
>>> w = orthogonal_random_features(32, 8, generator=torch.Generator().manual_seed(0))
>>> favor_attention(*(torch.randn(1, 1, 4, 8) for _ in range(3)), w, causal=True).shape
torch.Size([1, 1, 4, 8])
"""

from ._extension import available as extension_available
from .favor import FavorAttention, FavorState, favor_attention, favor_attention_step, unfused_favor_attention
from .features import favor_features, orthogonal_random_features
from .linear_attention import DEFAULT_CHUNK, causal_linear_attention, linear_attention

__all__ = [
    "DEFAULT_CHUNK",
    "FavorAttention",
    "FavorState",
    "causal_linear_attention",
    "extension_available",
    "favor_attention",
    "favor_attention_step",
    "favor_features",
    "linear_attention",
    "orthogonal_random_features",
    "unfused_favor_attention",
]
