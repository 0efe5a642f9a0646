"""Rule build_concept_store: MIL concept extractor -> top-k concept words per image."""

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

import torch  # noqa: E402

from mia.features.concepts import ConceptConfig, build_concept_store  # noqa: E402

torch.set_num_threads(smk.threads)
params = {k: v for k, v in smk.params.concepts.items() if k != "k"}
cfg = ConceptConfig(**params, k=smk.params.k)
build_concept_store(smk.input.captions, smk.input.features, smk.output.store, cfg)
log.info("wrote %s (%s)", smk.output.store, cfg)
