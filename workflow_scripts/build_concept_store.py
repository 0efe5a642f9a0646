"""Rule build_concept_store: the trained MIL concept detector -> top-k concept words per image."""

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

import torch  # noqa: E402

from mia.features.concepts import ConceptConfig, concepts_from_detector  # noqa: E402

torch.set_num_threads(smk.threads)
params = {k: v for k, v in smk.params.concepts.items() if k != "k"}
cfg = ConceptConfig(**params, k=smk.params.k)
concepts_from_detector(smk.input.detector, smk.input.features, smk.output.store, cfg)
log.info("wrote %s with the detector %s (%s)", smk.output.store, smk.input.detector, cfg)
