# Scores with the official toolkit (`mia evaluate captions`): coco-caption metrics on the decoded
# split against the raw references. (The VQA accuracy is scored in rules/vqa.smk.)

from snakemake.settings.types import DeploymentMethod

from mia.evaluation.java import JAVA_HINT, java_path


def check_java_up_front():
    """Caption evaluation runs Java (PTB tokenizer, METEOR): without it a local run stops before
    its first job, naming what to install, not after hours of training at the first
    evaluate_captions job. With --sdm conda the evaluation environment brings Java; on a cluster
    the nodes may have it where the login node has not: a warning only."""
    if not selected_runs("captioning") or java_path() is not None:
        return
    if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
        return
    if workflow.non_local_exec:
        print(f"WARNING: {JAVA_HINT} (the evaluate_captions jobs need it)", file=sys.stderr)
        return
    raise SystemExit(f"mia: caption evaluation is planned (the captioning tables). {JAVA_HINT}")


# Snakemake keeps one onstart handler (the last one registered): run any earlier one first.
_ONSTART_BEFORE_EVALUATE = workflow._onstart


onstart:
    _ONSTART_BEFORE_EVALUATE(log)
    check_java_up_front()


rule evaluate_captions:
    input:
        captions=f"{R}/runs/captioning/{{baseline}}/{{variant}}/s{{seed}}/captions_{{split}}.json",
        references=f"{R}/data/references_{{split}}.json",
    output:
        metrics=report(
            f"{R}/runs/captioning/{{baseline}}/{{variant}}/s{{seed}}/metrics_{{split}}.json",
            category="Metrics",
            subcategory="{baseline}/{variant}",
            labels={
                "run": "captioning/{baseline}/{variant}",
                "seed": "{seed}",
                "split": "{split}",
            },
        ),
        per_image=f"{R}/runs/captioning/{{baseline}}/{{variant}}/s{{seed}}/per_image_{{split}}.json",
    log:
        f"{R}/logs/evaluate_captions/{{baseline}}/{{variant}}/s{{seed}}/{{split}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate_captions/{{baseline}}/{{variant}}/s{{seed}}/{{split}}.tsv"
    conda:
        EVAL_ENV
    threads: res("evaluate", "threads")
    resources:
        mem_mb=res("evaluate", "mem_mb"),
        runtime=res("evaluate", "runtime"),
    params:
        repo=REPO,
        metrics=" ".join(config["evaluation"]["captions"]["metrics"]),
    shell:
        "PYTHONPATH={params.repo:q} python -m mia evaluate captions"
        " --results {input.captions:q} --references {input.references:q}"
        " --metrics {params.metrics} --out {output.metrics:q} --per-image {output.per_image:q}"
        " > {log:q} 2>&1"
