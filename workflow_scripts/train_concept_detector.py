"""Rule train_concept_detector: the MIL concept detector, trained once on the Karpathy train
captions and grid features; every concept store (grid, regions, test2015) is labelled by it."""

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

import torch  # noqa: E402

from mia.features.concepts import (  # noqa: E402
    ConceptConfig,
    load_caption_words,
    save_concept_detector,
    train_concept_detector,
)

torch.set_num_threads(smk.threads)
ks = sorted(set(smk.params.k.values()))
params = {k: v for k, v in smk.params.concepts.items() if k != "k"}
cfg = ConceptConfig(**params, k=max(ks))
detector = train_concept_detector(load_caption_words(smk.input.captions), smk.input.features, cfg,
                                  ks=ks)
save_concept_detector(detector, smk.output.detector, cfg)
log.info("wrote %s (%d words; val quality %s)", smk.output.detector, len(detector.vocabulary),
         detector.metrics)
