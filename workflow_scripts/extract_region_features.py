"""Rule extract_region_features: region features from the bottom-up TSVs, the bottom-up Faster
R-CNN on the images, given boxes, or detectron2 (``features.regions.source``).

The bottom-up extractor keeps finished chunks outside the output (``<store>.parts/``): a job
stopped by SIGTERM (Slurm's preemption or time limit) exits 75 and its retry resumes there.
"""

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

import torch  # noqa: E402

from mia.features.regions import RegionFeatureConfig, extract_region_features  # noqa: E402
from mia.training import Preempted  # noqa: E402

torch.set_num_threads(smk.threads)
cfg = RegionFeatureConfig(**smk.params.regions)
try:
    extract_region_features(cfg, smk.output.store, karpathy_json=smk.input.karpathy,
                            root=smk.params.root, instances=list(smk.input.get("instances", [])),
                            tsv_dir=smk.input.get("tsv_dir"), weights=smk.input.get("weights"))
except Preempted as stop:
    log.warning("%s; exiting %d so that a retry resumes", stop, stop.exit_code)
    raise SystemExit(stop.exit_code) from None
log.info("wrote %s (%s)", smk.output.store, cfg)
