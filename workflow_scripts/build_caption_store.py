"""Rule build_caption_store: dataset_coco.json -> captions.h5 + references_{split}.json."""

from pathlib import Path

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

from mia.data.preprocess import CaptionPreprocessConfig, build_caption_store  # noqa: E402

cfg = CaptionPreprocessConfig(**smk.params.preprocess)
build_caption_store(smk.input.karpathy, smk.output.store, Path(smk.output.references[0]).parent,
                    cfg)
log.info("wrote %s (%s)", smk.output.store, cfg)
