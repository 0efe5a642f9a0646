"""Rule answer_vqa: the answers of one split in the official VQA results format."""

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

import torch  # noqa: E402

from mia.data.loaders import VQAData  # noqa: E402
from mia.vqa.predict import answer_split  # noqa: E402
from mia.vqa.train import VQATrainConfig  # noqa: E402

torch.set_num_threads(smk.threads)
train = VQATrainConfig.from_dict(smk.params.train, "config vqa.train")  # its val_batch_size, device
data = VQAData.from_stores(smk.input.vqa, smk.input.features, concepts_h5=smk.input.concepts)
answers = answer_split(smk.input.model, data, smk.wildcards.split, out_path=smk.output.answers,
                       batch_size=train.val_batch_size, device=train.device)
log.info("answered %d questions of %s -> %s", len(answers), smk.wildcards.split,
         smk.output.answers)
