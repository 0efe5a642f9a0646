"""Rule pretrain_demo_backbone: train the demo trunk on the pre-training scenes; its checkpoint
is what the demo's grid and region extractors load."""

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from mia.features.demo_pretrain import pretrain_config_for, pretrain_demo_backbone  # noqa: E402
from mia.features.regions import RegionFeatureConfig  # noqa: E402

torch.set_num_threads(smk.threads)
cfg = pretrain_config_for(smk.params.train, RegionFeatureConfig(**smk.params.regions))
pretrain_demo_backbone(Path(smk.input.labels).parent, cfg, smk.output.checkpoint,
                       smk.output.metrics)
