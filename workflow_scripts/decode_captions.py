"""Rule decode_captions: beam-search captions of one split -> COCO results JSON."""

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

import torch  # noqa: E402

from mia.captioning.decode import decode_split  # noqa: E402
from mia.data.loaders import CaptionData  # noqa: E402

torch.set_num_threads(smk.threads)
p = smk.params.decode
data = CaptionData.from_stores(smk.input.captions, smk.input.features, smk.input.concepts)
results = decode_split(smk.input.model, data, smk.wildcards.split, beam_size=p["beam_size"],
                       max_length=p["max_length"], out_path=smk.output.captions,
                       device=p.get("device", "auto"), batch_size=p.get("batch_size", 100))
log.info("decoded %d images of %s with beam %d -> %s", len(results), smk.wildcards.split,
         p["beam_size"], smk.output.captions)
