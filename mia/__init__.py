"""Mutual Iterative Attention (Liu et al., NeurIPS 2019) and the pipeline that reproduces it.

The public entry point is :class:`mia.MutualIterativeAttention`; everything else (datasets,
features, models, evaluation, report) lives in subpackages that import it, never the reverse.

``MutualIterativeAttention`` and ``MIAOutput`` are imported on first use (PEP 562), so commands
that never touch a model (``mia evaluate``, ``mia config check``) do not pay for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["MIAOutput", "MutualIterativeAttention", "__version__"]

if TYPE_CHECKING:
    from mia.attention import MIAOutput, MutualIterativeAttention


def __getattr__(name: str) -> Any:
    if name in ("MIAOutput", "MutualIterativeAttention"):
        from mia import attention

        return getattr(attention, name)
    raise AttributeError(f"module 'mia' has no attribute {name!r}")
