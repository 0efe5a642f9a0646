"""Rule extract_region_features: region features from the bottom-up TSVs, given boxes, or
detectron2 (``features.regions.source``)."""

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

import torch  # noqa: E402

from mia.features.regions import RegionFeatureConfig, extract_region_features  # noqa: E402

torch.set_num_threads(smk.threads)
cfg = RegionFeatureConfig(**smk.params.regions)
extract_region_features(cfg, smk.output.store, karpathy_json=smk.input.karpathy,
                        root=smk.params.root, instances=list(smk.input.get("instances", [])),
                        tsv_dir=smk.input.get("tsv_dir"))
log.info("wrote %s (%s)", smk.output.store, cfg)
