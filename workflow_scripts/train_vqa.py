"""Rule train_vqa: one ``vqa/{baseline}/{variant}`` run (Table 3); resumable like captioning."""

import sys
from pathlib import Path

from _wf import finish_training, start

smk = globals()["snakemake"]
log = start(smk)

from mia.data.loaders import VQAData  # noqa: E402

try:
    from mia.vqa.train import VQATrainConfig, train_vqa
except ImportError as err:  # Table 3's models live in mia.vqa, written separately
    raise SystemExit(f"rule train_vqa ({smk.wildcards.baseline}/{smk.wildcards.variant}): "
                     f"mia.vqa.train.train_vqa is not available ({err}); Table 3 needs it") from err

from mia.captioning.train import Preempted  # noqa: E402

data = VQAData.from_stores(smk.input.vqa, smk.input.features)
cfg = VQATrainConfig.from_dict({**smk.params.train, "model": {
    **smk.params.model, "baseline": smk.wildcards.baseline, "variant": smk.wildcards.variant}},
    "config vqa.train")
ckpt_dir = Path(smk.params.checkpoints)
try:
    result = train_vqa(cfg, data, ckpt_dir, concepts_h5=smk.input.concepts,
                       glove=smk.input.get("glove"))
except Preempted as stop:
    log.warning("preempted: %s; exiting %d so the retry resumes", stop, stop.exit_code)
    sys.exit(stop.exit_code)
finish_training(ckpt_dir, result.best_path, smk.output.history, smk.output.model)
