"""Rule answer_vqa_server: the evaluation server's test-dev and test-std files of one trainval run.

Answers every question of the test store (VQA v2's test2015 questions, on the test2015 images'
own feature and concept stores) with the train + val model, then writes one file per server
split, each validated against its questions file (every question answered exactly once).
"""

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

import torch  # noqa: E402

from mia.data.loaders import VQAData  # noqa: E402
from mia.vqa.predict import answer_split  # noqa: E402
from mia.vqa.server import write_server_files  # noqa: E402
from mia.vqa.train import VQATrainConfig  # noqa: E402

torch.set_num_threads(smk.threads)
train = VQATrainConfig.from_dict(smk.params.train, "config vqa.train")  # its val_batch_size, device
data = VQAData.from_stores(smk.input.vqa, smk.input.features, concepts_h5=smk.input.concepts)
answers = answer_split(smk.input.model, data, "test", batch_size=train.val_batch_size,
                       device=train.device)
written = write_server_files(
    answers, {"test-dev": smk.input.test_dev, "test-std": smk.input.test_std},
    {"test-dev": smk.output.test_dev, "test-std": smk.output.test_std})
for split, path in written.items():
    log.info("%s: %s (upload to the VQA evaluation server's %s phase)", split, path, split)
