# mia-repro: the reproduction of Mutual Iterative Attention (Liu et al., NeurIPS 2019).
# Read it as a table of contents; each stage is one file in rules/, each job's work is one
# `mia` function called from workflow_scripts/. See config.yaml for what gets built.

from pathlib import Path

from snakemake.utils import min_version, validate

from mia.config import read_config_file

min_version("9.0")

# Snakemake reports a config file it cannot parse without its name or line; read config.yaml
# first so a syntax error or an empty file is reported as path:line:column (mia config check
# does the same for overrides, and `make demo` runs it).
if Path("config.yaml").exists():
    read_config_file("config.yaml")


configfile: "config.yaml"


validate(config, schema="schemas/config.schema.yaml")


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/download.smk"
include: "rules/pretrain.smk"
include: "rules/data.smk"
include: "rules/features.smk"
include: "rules/concepts.smk"
include: "rules/captioning.smk"
include: "rules/scst.smk"
include: "rules/vqa.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


localrules:
    all,


rule all:
    default_target: True
    input:
        f"reports/{NAME}/index.html",
        VQA_SERVER_FILES,  # the VQA evaluation server's uploads, when vqa.server.enabled
