# Scores with the official toolkit (`mia evaluate captions`): coco-caption metrics on the decoded
# split against the raw references. (The VQA accuracy is scored in rules/vqa.smk.)
# evaluation.captions_job: per_run (the default) scores each run in its own job, as soon as its
# captions exist; per_split (the demo) scores every captioning run of the decoded split in ONE
# job: one PTB tokenizer run and one METEOR JVM (whose start, reading a 62 MB paraphrase table,
# is most of a small run's evaluation) for all of them, each run's numbers equal to scoring it
# alone (tests/test_eval_captions.py). per_split waits for every run, so one failed run leaves
# the others unscored: worth it for the demo's 34 runs of seconds, not for the paper's.


if CAPTION_EVAL_RUNS and CAPTIONS_JOB == "per_split":

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

else:

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
