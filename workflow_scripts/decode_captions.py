"""Rule decode_captions: beam-search captions of one split -> COCO results JSON."""

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

import torch  # noqa: E402

from mia.captioning.decode import decode_split  # noqa: E402
from mia.captioning.finetune import image_paths_from_karpathy  # noqa: E402
from mia.data.loaders import CaptionData  # noqa: E402

torch.set_num_threads(smk.threads)
p = smk.params.decode
data = CaptionData.from_stores(smk.input.captions, smk.input.features, smk.input.concepts)
# A captioner that fine-tuned its CNN reads images; its rule then has the Karpathy JSON as input.
image_paths = (image_paths_from_karpathy(smk.input.karpathy, smk.params.data_root)
               if hasattr(smk.input, "karpathy") else None)
results = decode_split(smk.input.model, data, smk.wildcards.split, beam_size=p["beam_size"],
                       max_length=p["max_length"], out_path=smk.output.captions,
                       device=p.get("device", "auto"), batch_size=p.get("batch_size", 100),
                       image_paths=image_paths)
log.info("decoded %d images of %s with beam %d -> %s", len(results), smk.wildcards.split,
         p["beam_size"], smk.output.captions)
