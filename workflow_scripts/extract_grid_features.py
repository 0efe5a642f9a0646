"""Rule extract_grid_features: CNN grid features of every image of the Karpathy split."""

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

import torch  # noqa: E402

from mia.features.grid import GridFeatureConfig, extract_grid_features_from_karpathy  # noqa: E402

torch.set_num_threads(smk.threads)
cfg = GridFeatureConfig(**smk.params.grid)
extract_grid_features_from_karpathy(smk.input.karpathy, smk.params.root, smk.output.store, cfg)
log.info("wrote %s (%s)", smk.output.store, cfg)
