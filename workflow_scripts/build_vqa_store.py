"""Rule build_vqa_store: VQA v2 questions + annotations (train, val) -> vqa.h5."""

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

from mia.data.preprocess import VQAPreprocessConfig, build_vqa_store  # noqa: E402

cfg = VQAPreprocessConfig(**smk.params.preprocess)
build_vqa_store({"train": smk.input.train_questions, "val": smk.input.val_questions},
                {"train": smk.input.train_annotations, "val": smk.input.val_annotations},
                smk.output.store, cfg)
log.info("wrote %s (%s)", smk.output.store, cfg)
