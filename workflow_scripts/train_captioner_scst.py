"""Rule train_captioner_scst: self-critical training (CIDEr-D reward) from the XE model.

Same contract as train_captioner.py: checkpoints outside the outputs, resume on retry, exit 75
when preempted, outputs copied atomically at the end.
"""

import sys
from pathlib import Path

from _wf import finish_training, start

smk = globals()["snakemake"]
log = start(smk)

from mia.data.loaders import CaptionData  # noqa: E402

try:
    from mia.captioning.scst import SCSTConfig, train_scst
except ImportError as err:  # the SCST stage of Table 2 is not written yet
    raise SystemExit(f"rule train_captioner_scst ({smk.wildcards.baseline}/"
                     f"{smk.wildcards.variant}): mia.captioning.scst.train_scst is not available "
                     f"({err}); Table 2 needs it") from err

from mia.captioning.train import Preempted  # noqa: E402

data = CaptionData.from_stores(smk.input.captions, smk.input.features, smk.input.concepts)
cfg = SCSTConfig.from_dict(dict(smk.params.scst), "config captioning.scst")
ckpt_dir = Path(smk.params.checkpoints)
try:
    result = train_scst(cfg, data, smk.input.xe_model, ckpt_dir)
except Preempted as stop:
    log.warning("preempted: %s; exiting %d so the retry resumes", stop, stop.exit_code)
    sys.exit(stop.exit_code)
finish_training(ckpt_dir, result.best_path, smk.output.history, smk.output.model)
