# VQA runs {baseline}/{variant} of Table 3 (Up-Down, BAN): train on VQA v2 train, answer the
# evaluation split. Checkpoints live outside the outputs, as for captioning (resume on retry).


rule train_vqa:
    input:
        unpack(vqa_inputs),
    output:
        model=f"{R}/runs/vqa/{{baseline}}/{{variant}}/s{{seed}}/model.pt",
        history=f"{R}/runs/vqa/{{baseline}}/{{variant}}/s{{seed}}/history.json",
    log:
        f"{R}/logs/train_vqa/{{baseline}}/{{variant}}/s{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/train_vqa/{{baseline}}/{{variant}}/s{{seed}}.tsv"
    retries: config["vqa"]["retries"]
    conda:
        CORE_ENV
    threads: res("train_vqa", "threads")
    resources:
        mem_mb=res("train_vqa", "mem_mb"),
        runtime=res("train_vqa", "runtime"),
        gpu=res("train_vqa", "gpu"),
    params:
        model=config["vqa"]["model"],
        train=config["vqa"]["train"],
        checkpoints=f"{R}/runs/vqa/{{baseline}}/{{variant}}/s{{seed}}/checkpoints",
    script:
        "../workflow_scripts/train_vqa.py"


rule answer_vqa:
    input:
        unpack(vqa_inputs),
        model=f"{R}/runs/vqa/{{baseline}}/{{variant}}/s{{seed}}/model.pt",
    output:
        answers=f"{R}/runs/vqa/{{baseline}}/{{variant}}/s{{seed}}/answers_{{split}}.json",
    log:
        f"{R}/logs/answer_vqa/{{baseline}}/{{variant}}/s{{seed}}/{{split}}.log",
    benchmark:
        f"{R}/benchmarks/answer_vqa/{{baseline}}/{{variant}}/s{{seed}}/{{split}}.tsv"
    conda:
        CORE_ENV
    threads: res("decode", "threads")
    resources:
        mem_mb=res("decode", "mem_mb"),
        runtime=res("decode", "runtime"),
        gpu=res("decode", "gpu"),
    script:
        "../workflow_scripts/answer_vqa.py"


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
