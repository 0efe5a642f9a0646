"""Rule answer_vqa: answers of one split in the official VQA results format."""

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

from mia.data.loaders import VQAData  # noqa: E402

try:
    from mia.vqa.predict import answer_split
except ImportError as err:
    raise SystemExit(f"rule answer_vqa: mia.vqa.predict.answer_split is not available ({err}); "
                     "Table 3 needs it") from err

data = VQAData.from_stores(smk.input.vqa, smk.input.features)
answers = answer_split(smk.input.model, data, smk.wildcards.split, out_path=smk.output.answers,
                       concepts_h5=smk.input.concepts)
log.info("answered %d questions of %s -> %s", len(answers), smk.wildcards.split,
         smk.output.answers)
