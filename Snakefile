# mia-repro: the reproduction of Mutual Iterative Attention (Liu et al., NeurIPS 2019).
# Read it as a table of contents; each stage is one file in rules/, each job's work is one
# `mia` function called from workflow_scripts/. See config.yaml for what gets built.

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, schema="schemas/config.schema.yaml")


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/download.smk"
include: "rules/data.smk"
include: "rules/features.smk"
include: "rules/concepts.smk"
include: "rules/captioning.smk"
include: "rules/vqa.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


localrules:
    all,


rule all:
    default_target: True
    input:
        f"reports/{NAME}/index.html",
