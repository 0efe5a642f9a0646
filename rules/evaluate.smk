# Scores with the official toolkits (`mia evaluate`): coco-caption metrics on the decoded split
# against the raw references, and the official VQA accuracy per answer type.


rule evaluate_captions:
    input:
        captions=f"{R}/runs/captioning/{{baseline}}/{{variant}}/s{{seed}}/captions_{{split}}.json",
        references=f"{R}/data/references_{{split}}.json",
    output:
        metrics=report(
            f"{R}/runs/captioning/{{baseline}}/{{variant}}/s{{seed}}/metrics_{{split}}.json",
            category="Metrics",
            subcategory="{baseline}/{variant}",
            labels={"run": "captioning/{baseline}/{variant}", "seed": "{seed}", "split": "{split}"},
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


rule evaluate_vqa:
    input:
        answers=f"{R}/runs/vqa/{{baseline}}/{{variant}}/s{{seed}}/answers_{{split}}.json",
        questions=lambda wc: VQA_QUESTIONS[wc.split],
        annotations=lambda wc: VQA_ANNOTATIONS[wc.split],
    output:
        metrics=f"{R}/runs/vqa/{{baseline}}/{{variant}}/s{{seed}}/metrics_{{split}}.json",
    log:
        f"{R}/logs/evaluate_vqa/{{baseline}}/{{variant}}/s{{seed}}/{{split}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate_vqa/{{baseline}}/{{variant}}/s{{seed}}/{{split}}.tsv"
    conda:
        EVAL_ENV
    threads: res("evaluate", "threads")
    resources:
        mem_mb=res("evaluate", "mem_mb"),
        runtime=res("evaluate", "runtime"),
    params:
        repo=REPO,
    shell:
        "PYTHONPATH={params.repo:q} python -m mia evaluate vqa"
        " --results {input.answers:q} --questions {input.questions:q}"
        " --annotations {input.annotations:q} --out {output.metrics:q} > {log:q} 2>&1"
