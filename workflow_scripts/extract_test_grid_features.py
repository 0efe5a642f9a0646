"""Rule extract_test_grid_features: grid features of the test2015 images (for their concepts)."""

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

import torch  # noqa: E402

from mia.features.grid import GridFeatureConfig, extract_grid_features  # noqa: E402
from mia.features.images import images_from_vqa_questions  # noqa: E402

torch.set_num_threads(smk.threads)
cfg = GridFeatureConfig(**smk.params.grid)
images = images_from_vqa_questions(smk.input.questions, smk.input.images)
extract_grid_features(images, smk.output.store, cfg)
log.info("wrote %s: %d test images (%s)", smk.output.store, len(images), cfg)
