"""Rule build_vqa_store: VQA v2 questions + annotations (train, val) -> vqa.h5; the test
questions (``extra_*`` inputs) only feed the question vocabulary and BAN's tf-idf."""

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

from mia.data.preprocess import VQAPreprocessConfig, build_vqa_store  # noqa: E402

cfg = VQAPreprocessConfig(**smk.params.preprocess)
extra = {k.removeprefix("extra_"): v for k, v in smk.input.items() if k.startswith("extra_")}
build_vqa_store({"train": smk.input.train_questions, "val": smk.input.val_questions},
                {"train": smk.input.train_annotations, "val": smk.input.val_annotations},
                smk.output.store, cfg, extra_questions=extra)
log.info("wrote %s (%s)", smk.output.store, cfg)
