"""Rule train_captioner: cross-entropy training of one ``captioning/{baseline}/{variant}`` run.

The run lifecycle (checkpoints outside the outputs, fingerprint, attempts, exit 75 when
preempted, resume on retry) is :mod:`mia.training`'s; the outputs (``model.pt`` = the val-selected
``best.pt``, ``history.json``) are published whole
(verified against the digest recorded with ``best.pt``) only after the last epoch.
"""

import dataclasses

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

import torch  # noqa: E402

from mia.captioning.config import CaptionerConfig, TrainConfig  # noqa: E402
from mia.captioning.finetune import image_paths_from_karpathy  # noqa: E402
from mia.captioning.train import train_captioner  # noqa: E402
from mia.data.loaders import CaptionData  # noqa: E402
from mia.io import write_json  # noqa: E402
from mia.training import RunDirectory, fingerprint, run_training_job  # noqa: E402

torch.set_num_threads(smk.threads)
data = CaptionData.from_stores(smk.input.captions, smk.input.features, smk.input.concepts)
captioner = CaptionerConfig.from_dict(
    {**smk.params.model, "baseline": smk.wildcards.baseline, "variant": smk.wildcards.variant,
     "feature_dim": int(data.features.shape[2])}, "config captioning.model")
train = dict(smk.params.train)
train["keep_optimizer_state"] = bool(train.get("keep_optimizer_state")
                                     or smk.params.keep_optimizer_state)
cfg = TrainConfig.from_dict({**train, "seed": int(smk.wildcards.seed), "captioner": captioner},
                            "config captioning.train")
inputs = {"captions": smk.input.captions, "features": smk.input.features,
          "concepts": smk.input.concepts}
# What `mia visualize attention --run DIR` needs to find this run's data again.
write_json(smk.output.run, {"run": f"captioning/{captioner.baseline}/{captioner.variant}",
                            "seed": cfg.seed, "inputs": inputs,
                            "images_root": smk.params.images_root})
run_dir = RunDirectory(smk.params.checkpoints, fingerprint(dataclasses.asdict(cfg), inputs))
stores = ", ".join(f"{k} store {v}" for k, v in inputs.items())
image_paths = None
if captioner.fine_tunes_cnn:  # the CNN is trained too: it reads the images themselves
    image_paths = image_paths_from_karpathy(smk.input.karpathy, smk.params.data_root)
result = run_training_job(
    run_dir, lambda: train_captioner(cfg, data, run_dir.path, inputs=stores,
                                     image_paths=image_paths), log,
    f"{captioner.baseline}/{captioner.variant} for {cfg.epochs} epochs",
    publish=(smk.output.history, smk.output.model))
log.info("best val CIDEr-D %.2f (x100) at epoch %d", 100 * result.best_score, result.best_epoch)
