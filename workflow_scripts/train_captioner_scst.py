"""Rule train_captioner_scst: self-critical training (CIDEr-D reward) from the XE model.

Same contract as train_captioner.py (:mod:`mia.training`): checkpoints outside the outputs, a
fingerprint over the SCST config and every input file (stores, the XE model, the document
frequencies), so a changed config or a retrained XE model never resumes a stale checkpoint;
exit 75 when preempted and resume on the retry; ``model.pt`` (the val-selected ``best.pt``) and
``history.json`` published whole (verified against the digest of ``best.pt``)
only after the last epoch.
"""

import dataclasses

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

import torch  # noqa: E402

from mia.captioning.scst import SCSTConfig  # noqa: E402
from mia.captioning.scst_train import train_scst  # noqa: E402
from mia.data.loaders import CaptionData, LoaderConfig  # noqa: E402
from mia.training import RunDirectory, fingerprint, run_training_job  # noqa: E402

torch.set_num_threads(smk.threads)
data = CaptionData.from_stores(smk.input.captions, smk.input.features, smk.input.concepts,
                               LoaderConfig.for_device(smk.params.scst.get("device", "auto")))
cfg = SCSTConfig.from_dict({**smk.params.scst, "seed": int(smk.wildcards.seed)},
                           "config captioning.scst")
inputs = {"captions": smk.input.captions, "features": smk.input.features,
          "concepts": smk.input.concepts, "xe_model": smk.input.xe_model,
          "document_frequency": smk.input.document_frequency}
run_dir = RunDirectory(smk.params.checkpoints, fingerprint(dataclasses.asdict(cfg), inputs))
stores = ", ".join(f"{k} {v}" for k, v in inputs.items())
result = run_training_job(
    run_dir,
    lambda: train_scst(cfg, data, smk.input.xe_model, run_dir.path,
                       smk.input.document_frequency, inputs=stores),
    log, f"SCST of {smk.wildcards.baseline}/{smk.wildcards.variant} for {cfg.epochs} epochs",
    publish=(smk.output.history, smk.output.model))
if result.best_epoch == 0:
    log.warning("no SCST epoch beat the XE model's val CIDEr-D %.2f (x100): the stage keeps the "
                "XE weights (lower the SCST learning rate or train XE longer)",
                100 * result.best_score)
else:
    log.info("best val CIDEr-D %.2f (x100) at SCST epoch %d", 100 * result.best_score,
             result.best_epoch)
