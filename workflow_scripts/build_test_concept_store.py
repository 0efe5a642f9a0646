"""Rule build_test_concept_store: concepts of the test2015 images, labelled by the same trained
MIL detector as the Karpathy images' concept stores (trained once: train_concept_detector)."""

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

import torch  # noqa: E402

from mia.features.concepts import ConceptConfig, concepts_from_detector  # noqa: E402

torch.set_num_threads(smk.threads)
params = {k: v for k, v in smk.params.concepts.items() if k != "k"}
cfg = ConceptConfig(**params, k=smk.params.k)
concepts_from_detector(smk.input.detector, smk.input.test_features, smk.output.store, cfg)
log.info("wrote %s with the detector %s (%s)", smk.output.store, smk.input.detector, cfg)
