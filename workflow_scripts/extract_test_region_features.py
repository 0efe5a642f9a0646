"""Rule extract_test_region_features: region features of the test2015 images (same source and
settings as the Karpathy images' store)."""

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

import torch  # noqa: E402

from mia.features.images import images_from_vqa_questions  # noqa: E402
from mia.features.regions import RegionFeatureConfig, extract_region_features_of  # noqa: E402
from mia.training import Preempted  # noqa: E402

torch.set_num_threads(smk.threads)
cfg = RegionFeatureConfig(**smk.params.regions)
# bottom_up_tsv reads only the image ids; the other sources read the images too
images = images_from_vqa_questions(smk.input.questions, smk.input.get("images", "test2015"))
try:
    extract_region_features_of(images, cfg, smk.output.store,
                               instances=list(smk.input.get("instances", [])),
                               tsv_dir=smk.input.get("tsv_dir"), weights=smk.input.get("weights"))
except Preempted as stop:  # bottom_up: finished chunks stay in <store>.parts/ for the retry
    log.warning("%s; exiting %d so that a retry resumes", stop, stop.exit_code)
    raise SystemExit(stop.exit_code) from None
log.info("wrote %s: %d test images (%s)", smk.output.store, len(images), cfg)
