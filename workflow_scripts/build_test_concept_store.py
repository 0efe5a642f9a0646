"""Rule build_test_concept_store: concepts of the test2015 images.

The MIL detector is trained exactly as for the Karpathy images' concept store (same captions, grid
features, config and seed) and then labels the test images' grid features. The two detectors'
val quality is compared: equal numbers mean the same detector labelled both image sets.
"""

import math

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

import torch  # noqa: E402

from mia.data.store import open_store, read_attrs  # noqa: E402
from mia.features.concepts import ConceptConfig, build_concept_store  # noqa: E402

torch.set_num_threads(smk.threads)
params = {k: v for k, v in smk.params.concepts.items() if k != "k"}
cfg = ConceptConfig(**params, k=smk.params.k)
build_concept_store(smk.input.captions, smk.input.features, smk.output.store, cfg,
                    extract_from=smk.input.test_features)
with open_store(smk.output.store, "concepts") as f:
    ours = read_attrs(f).get("val_mAP")
with open_store(smk.input.reference, "concepts") as f:
    theirs = read_attrs(f).get("val_mAP")
if isinstance(ours, float) and isinstance(theirs, float) and not (
        math.isclose(ours, theirs, rel_tol=1e-6) or (math.isnan(ours) and math.isnan(theirs))):
    log.warning("the detector retrained for the test images scores val mAP %.6f, the one of %s "
                "%.6f: training was not bit-reproducible here (GPU kernels?), so the test images' "
                "concepts come from a slightly different detector", ours, smk.input.reference,
                theirs)
log.info("wrote %s (%s)", smk.output.store, cfg)
