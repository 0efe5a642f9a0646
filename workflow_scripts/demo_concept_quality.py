"""Rule demo_concept_quality: precision and recall of the MIL detector's top object words
against what the demo world drew in each image of the decoded split."""

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

from mia.features.concept_quality import concept_quality, summary  # noqa: E402
from mia.io import write_json  # noqa: E402

quality = concept_quality(smk.input.concepts, smk.input.scenes, split=smk.params.split)
write_json(smk.output.quality, quality)
log.info("%s", summary(quality))
