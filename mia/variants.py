"""The run variants of the paper, defined once for the code, the workflow and the schema.

A run is ``{task}/{baseline}/{variant}``. The Snakefile's wildcard constraint, the config schema's
``run_id`` pattern (tested to match) and the model configs all take the variants from here:

* ``base``: the baseline alone; ``mia``: LayerNorm(I_N + T_N) replaces its image inputs;
* ``mia_visual`` (I_N only) and ``mia_concepts`` (T_N only): Table 4;
* ``self_attention``: mutual attention replaced by self-attention (section 3.3);
* ``mia_n1`` .. ``mia_n9``: MIA with N iterations (Figure 4 sweeps N = 1..5).
"""

from __future__ import annotations

import re

NAMED_VARIANTS: tuple[str, ...] = ("base", "mia", "mia_visual", "mia_concepts", "self_attention")
MAX_ITERATIONS = 9
ITERATION_VARIANTS: tuple[str, ...] = tuple(f"mia_n{k}" for k in range(1, MAX_ITERATIONS + 1))
VARIANTS: tuple[str, ...] = NAMED_VARIANTS + ITERATION_VARIANTS
#: A regular expression matching exactly the variants (for wildcards and the schema).
VARIANT_PATTERN = "|".join((*NAMED_VARIANTS, f"mia_n[1-{MAX_ITERATIONS}]"))
_ITERATIONS = re.compile(rf"^mia_n([1-{MAX_ITERATIONS}])$")


def check_variant(variant: str, where: str = "variant") -> str:
    if variant not in VARIANTS:
        raise ValueError(f"{where}: unknown variant {variant!r}; expected one of "
                         f"{list(NAMED_VARIANTS)} or mia_n1..mia_n{MAX_ITERATIONS}")
    return variant


def iterations(variant: str, default: int) -> int:
    """MIA's N for a variant: ``mia_n3`` -> 3, any other variant -> ``default``."""
    match = _ITERATIONS.match(variant)
    return int(match.group(1)) if match else default
