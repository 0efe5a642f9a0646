# Scores with the official toolkit (`mia evaluate captions`): coco-caption metrics on the decoded
# split against the raw references. (The VQA accuracy is scored in rules/vqa.smk.)
# Every captioning run decodes the same split (captioning.decode.split), and all of them are
# scored in ONE job: one PTB tokenizer run and one METEOR JVM (whose start, reading a 62 MB
# paraphrase table, is most of an evaluation's cost) for every run; each run's numbers equal
# those of scoring it alone (tests/test_eval_captions.py).


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
