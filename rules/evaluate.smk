# Scores with the official toolkit (`mia evaluate captions`): coco-caption metrics on the decoded
# split against the raw references. (The VQA accuracy is scored in rules/vqa.smk.)


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
