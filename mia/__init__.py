"""Mutual Iterative Attention (Liu et al., NeurIPS 2019) and the pipeline that reproduces it.

The public entry point is :class:`mia.MutualIterativeAttention`; everything else (datasets,
features, models, evaluation, report) lives in subpackages that import it, never the reverse.
"""

from mia.attention import MIAOutput, MutualIterativeAttention

__version__ = "0.1.0"
__all__ = ["MIAOutput", "MutualIterativeAttention", "__version__"]
