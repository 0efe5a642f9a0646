"""Rule decode_captions: beam-search captions of one split -> COCO results JSON."""

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

import torch  # noqa: E402

from mia.captioning.decode import decode_split  # noqa: E402
from mia.data.loaders import CaptionData  # noqa: E402

torch.set_num_threads(smk.threads)
p = smk.params.decode
# A captioner that fine-tuned its CNN reads images (its rule then has the evaluation image
# store as input), not the stored features.
image_store = smk.input.image_eval if hasattr(smk.input, "image_eval") else None
data = CaptionData.from_stores(smk.input.captions, None if image_store else smk.input.features,
                               smk.input.concepts)
results = decode_split(smk.input.model, data, smk.wildcards.split, beam_size=p["beam_size"],
                       max_length=p["max_length"], out_path=smk.output.captions,
                       device=p.get("device", "auto"), batch_size=p.get("batch_size", 100),
                       image_store=image_store, step_mode=p.get("decode_step", "eager"))
log.info("decoded %d images of %s with beam %d -> %s", len(results), smk.wildcards.split,
         p["beam_size"], smk.output.captions)
