"""Rules train_vqa and train_vqa_trainval: one ``vqa/{baseline}/{variant}`` run of Table 3.

train_vqa trains on the train answers and selects the epoch of the best official val accuracy;
train_vqa_trainval (the evaluation-server runs) trains on train + val and keeps the last epoch
(``params.train`` then has ``train_splits: [train, val]``). The run lifecycle (checkpoints
outside the outputs, fingerprint of config + stores + GloVe, attempts, exit 75 when preempted,
resume on retry) is :mod:`mia.training`'s; ``model.pt`` and ``history.json`` are published whole
(verified against the digest of ``best.pt``) only after the last epoch.
"""

import dataclasses

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

import torch  # noqa: E402

from mia.data.loaders import LoaderConfig, VQAData  # noqa: E402
from mia.training import RunDirectory, fingerprint, run_training_job  # noqa: E402
from mia.vqa.config import VQAModelConfig  # noqa: E402
from mia.vqa.train import VQATrainConfig, train_vqa  # noqa: E402

torch.set_num_threads(smk.threads)
data = VQAData.from_stores(smk.input.vqa, smk.input.features,
                          LoaderConfig.for_device(smk.params.train.get("device", "auto")),
                          concepts_h5=smk.input.concepts)
model = VQAModelConfig.from_dict(
    {**smk.params.model, "baseline": smk.wildcards.baseline, "variant": smk.wildcards.variant,
     "feature_dim": int(data.features.shape[2])}, "config vqa.model")
cfg = VQATrainConfig.from_dict({**smk.params.train, "seed": int(smk.wildcards.seed),
                                "model": model}, "config vqa.train")
inputs = {name: smk.input.get(name) for name in ("vqa", "features", "concepts", "glove",
                                                 "val_questions", "val_annotations")
          if smk.input.get(name)}
run_dir = RunDirectory(smk.params.checkpoints, fingerprint(dataclasses.asdict(cfg), inputs))
stores = ", ".join(f"{k} store {v}" for k, v in inputs.items() if k in ("vqa", "features",
                                                                         "concepts"))
mode = "on " + " + ".join(cfg.train_splits)
result = run_training_job(
    run_dir, lambda: train_vqa(cfg, data, run_dir.path, glove=inputs.get("glove"), inputs=stores,
                               val_questions=inputs.get("val_questions"),
                               val_annotations=inputs.get("val_annotations")),
    log, f"vqa/{model.baseline}/{model.variant} {mode} for {cfg.epochs} epochs",
    publish=(smk.output.history, smk.output.model))
if cfg.validates:
    best = result.history[result.best_epoch - 1]
    log.info("best official val accuracy %.2f at epoch %d (%s)", result.best_score,
             result.best_epoch, ", ".join(f"{k[len('val_accuracy_'):]} {v:.2f}"
                                          for k, v in best.items()
                                          if k.startswith("val_accuracy_")))
else:
    log.info("trained on %s; keeping the last epoch (%d)", "+".join(cfg.train_splits),
             result.best_epoch)
