# Scores with the official toolkit (`mia evaluate captions`): coco-caption metrics on the decoded
# split against the raw references. (The VQA accuracy is scored in rules/vqa.smk.)
# Every captioning run decodes the same split (captioning.decode.split), and all of them are
# scored in ONE job: one PTB tokenizer run and one METEOR JVM (whose start, reading a 62 MB
# paraphrase table, is most of an evaluation's cost) for every run; each run's numbers equal
# those of scoring it alone (tests/test_eval_captions.py).

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


if CAPTION_EVAL_RUNS:

    rule evaluate_captions:
        input:
            captions=[caption_eval_file(r, s, "captions") for r, s in CAPTION_EVAL_RUNS],
            references=f"{R}/data/references_{CAPTION_SPLIT}.json",
        output:
            metrics=[
                report(
                    caption_eval_file(r, s, "metrics"),
                    category="Metrics",
                    subcategory=r.split("/", 1)[1],
                    labels={"run": r, "seed": str(s), "split": CAPTION_SPLIT},
                )
                for r, s in CAPTION_EVAL_RUNS
            ],
            per_image=[caption_eval_file(r, s, "per_image") for r, s in CAPTION_EVAL_RUNS],
        log:
            f"{R}/logs/evaluate_captions/{CAPTION_SPLIT}.log",
        benchmark:
            f"{R}/benchmarks/evaluate_captions/{CAPTION_SPLIT}.tsv"
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
            " --metrics {params.metrics} --out {output.metrics:q}"
            " --per-image {output.per_image:q} > {log:q} 2>&1"
