# mia-repro: the reproduction of Mutual Iterative Attention (Liu et al., NeurIPS 2019).
# Read it as a table of contents; each stage is one file in rules/, each job's work is one
# `mia` function called from workflow_scripts/. See config.yaml for what gets built.

import sys
from pathlib import Path

from snakemake.utils import min_version

from mia.config import ConfigError, check_config, read_config

min_version("9.0")

# Snakemake reports a config file it cannot parse without its name or line, and keeps the second
# of a key written twice; read config.yaml first so either is reported as path:line (mia config
# check does the same, and `make demo` runs it).
try:
    BASE_CONFIG = [read_config("config.yaml")] if Path("config.yaml").exists() else []
except ConfigError as err:
    sys.exit(str(err))


configfile: "config.yaml"


# One validation for `mia config check` and the workflow (mia.config.check_config): the schema,
# then what the rules and the dataclasses would refuse later, each error one line naming the file,
# line and key. Jobs (Slurm, subprocesses) skip it: the main process checked the same config.
if workflow.is_main_process:
    try:
        CONFIG_FILES = BASE_CONFIG + [read_config(f) for f in workflow.overwrite_configfiles]
        check_config(config, CONFIG_FILES, source=" + ".join(str(f.path) for f in CONFIG_FILES))
    except ConfigError as err:
        sys.exit(str(err))


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/download.smk"
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


# Before the first job: what would otherwise fail hours into the run (rules/common.smk).
onstart:
    check_downloads_up_front()
    check_java_up_front()


rule all:
    default_target: True
    input:
        f"reports/{NAME}/index.html",
        VQA_SERVER_FILES,  # the VQA evaluation server's uploads, when vqa.server.enabled
