"""Rule train_captioner: cross-entropy training of one ``captioning/{baseline}/{variant}`` run.

Training runs in ``params.checkpoints`` (no rule's output, so Snakemake keeps it when a job
fails); a retried job resumes from its ``last.pt``. The rule's outputs (``model.pt`` = the
val-selected ``best.pt``, ``history.json``) are copied there atomically only after the last epoch.
A checkpoint folder left by a different config or different input stores is cleared first, so a
changed config never resumes a stale run. SIGTERM (Slurm's warning before the time limit) makes
training save ``last.pt`` and this script exit 75 (EX_TEMPFAIL) for the retry.
"""

import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

from _wf import finish_training, start

smk = globals()["snakemake"]
log = start(smk)

import torch  # noqa: E402

from mia.captioning.config import CaptionerConfig, TrainConfig  # noqa: E402
from mia.captioning.train import Preempted, train_captioner  # noqa: E402
from mia.data.loaders import CaptionData  # noqa: E402


def fingerprint(cfg: TrainConfig, inputs: list[str]) -> dict:
    """What a resumable checkpoint must match: the full config and the input stores' stamps."""
    stamps = {p: [os.stat(p).st_size, int(os.stat(p).st_mtime)] for p in inputs}
    return {"train": json.loads(json.dumps(dataclasses.asdict(cfg))), "inputs": stamps}


torch.set_num_threads(smk.threads)
data = CaptionData.from_stores(smk.input.captions, smk.input.features, smk.input.concepts)
captioner = CaptionerConfig.from_dict(
    {**smk.params.model, "baseline": smk.wildcards.baseline, "variant": smk.wildcards.variant,
     "feature_dim": int(data.features.shape[2])}, "config captioning.model")
cfg = TrainConfig.from_dict({**smk.params.train, "captioner": captioner}, "config captioning.train")

ckpt_dir = Path(smk.params.checkpoints)
stamp_path = ckpt_dir / "fingerprint.json"
stamp = fingerprint(cfg, [smk.input.captions, smk.input.features, smk.input.concepts])
if ckpt_dir.exists() and (not stamp_path.exists() or json.loads(stamp_path.read_text()) != stamp):
    log.warning("%s: config or inputs changed since these checkpoints; starting over", ckpt_dir)
    shutil.rmtree(ckpt_dir)
ckpt_dir.mkdir(parents=True, exist_ok=True)
stamp_path.write_text(json.dumps(stamp, indent=1, sort_keys=True))
# Starts of this run in this folder (Snakemake's script object does not say which attempt it is).
attempts_path = ckpt_dir / "attempts"
attempt = int(attempts_path.read_text()) + 1 if attempts_path.exists() else 1
attempts_path.write_text(str(attempt))

log.info("training %s/%s for %d epochs (checkpoints in %s, attempt %d)", captioner.baseline,
         captioner.variant, cfg.epochs, ckpt_dir, attempt)
try:
    result = train_captioner(cfg, data, ckpt_dir)
except Preempted as stop:
    log.warning("preempted: %s; exiting %d so the retry resumes", stop, stop.exit_code)
    sys.exit(stop.exit_code)
log.info("best val CIDEr-D %.4f at epoch %d", result.best_val_cider, result.best_epoch)
finish_training(ckpt_dir, result.best_path, smk.output.history, smk.output.model)
