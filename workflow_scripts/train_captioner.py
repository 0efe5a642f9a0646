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
from mia.captioning.train import train_captioner  # noqa: E402
from mia.data.loaders import CaptionData, LoaderConfig  # noqa: E402
from mia.data.store import open_store  # noqa: E402
from mia.io import write_json  # noqa: E402
from mia.training import RunDirectory, fingerprint, run_training_job  # noqa: E402

torch.set_num_threads(smk.threads)
image_stores = None
if hasattr(smk.input, "image_train"):  # the CNN is trained too: it reads the images themselves
    image_stores = (smk.input.image_train, smk.input.image_eval)
with open_store(smk.input.features) as store:
    feature_dim = int(store["features"].shape[2])
# A run that computes its features with its own CNN never reads the stored ones (25 GB).
data = CaptionData.from_stores(smk.input.captions, None if image_stores else smk.input.features,
                               smk.input.concepts,
                               LoaderConfig.for_device(smk.params.train.get("device", "auto")))
captioner = CaptionerConfig.from_dict(
    {**smk.params.model, "baseline": smk.wildcards.baseline, "variant": smk.wildcards.variant,
     "feature_dim": feature_dim}, "config captioning.model")
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
# A rebuilt image store (fine-tuning runs) changes the run like a rebuilt feature store.
images = dict(zip(("image_train", "image_eval"), image_stores or (), strict=False))
run_dir = RunDirectory(smk.params.checkpoints,
                       fingerprint(dataclasses.asdict(cfg), {**inputs, **images}))
stores = ", ".join(f"{k} store {v}" for k, v in inputs.items())
result = run_training_job(
    run_dir, lambda: train_captioner(cfg, data, run_dir.path, inputs=stores,
                                     image_stores=image_stores), log,
    f"{captioner.baseline}/{captioner.variant} for {cfg.epochs} epochs",
    publish=(smk.output.history, smk.output.model))
log.info("best val CIDEr-D %.2f (x100) at epoch %d", 100 * result.best_score, result.best_epoch)
