"""Rule build_vqa_test_store: VQA v2 test2015 questions -> a vqa store in vqa.h5's vocabularies."""

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

from mia.data.preprocess import build_vqa_test_store  # noqa: E402

build_vqa_test_store(smk.input.test_std, smk.input.vocab, smk.output.store,
                     subsets={"test-dev": smk.input.test_dev})
log.info("wrote %s (questions %s, vocabularies of %s)", smk.output.store, smk.input.test_std,
         smk.input.vocab)
