# Captioning runs {baseline}/{variant}: XE training (then SCST for the Table 2 baselines) and
# beam-search decoding. Training writes its checkpoints under checkpoints/, which is no rule's
# output: Snakemake never deletes it, so a preempted or failed attempt (retried `retries` times)
# resumes from checkpoints/last.pt. model.pt and history.json appear only once training is done.


rule train_captioner:
    input:
        unpack(caption_inputs),
    output:
        model=f"{R}/runs/captioning/{{baseline}}/{{variant}}/xe/model.pt",
        history=report(
            f"{R}/runs/captioning/{{baseline}}/{{variant}}/xe/history.json",
            category="Training",
            subcategory="{baseline}/{variant}",
            labels={"run": "{baseline}/{variant}", "stage": "xe", "file": "history"},
        ),
    log:
        f"{R}/logs/train_captioner/{{baseline}}/{{variant}}/xe.log",
    benchmark:
        f"{R}/benchmarks/train_captioner/{{baseline}}/{{variant}}/xe.tsv"
    retries: config["captioning"]["retries"]
    conda:
        CORE_ENV
    threads: res("train_captioner", "threads")
    resources:
        mem_mb=res("train_captioner", "mem_mb"),
        runtime=res("train_captioner", "runtime"),
        gpu=res("train_captioner", "gpu"),
    params:
        model=config["captioning"]["model"],
        train=config["captioning"]["train"],
        checkpoints=f"{R}/runs/captioning/{{baseline}}/{{variant}}/xe/checkpoints",
    script:
        "../workflow_scripts/train_captioner.py"


rule train_captioner_scst:
    input:
        unpack(caption_inputs),
        xe_model=f"{R}/runs/captioning/{{baseline}}/{{variant}}/xe/model.pt",
    output:
        model=f"{R}/runs/captioning/{{baseline}}/{{variant}}/scst/model.pt",
        history=f"{R}/runs/captioning/{{baseline}}/{{variant}}/scst/history.json",
    log:
        f"{R}/logs/train_captioner/{{baseline}}/{{variant}}/scst.log",
    benchmark:
        f"{R}/benchmarks/train_captioner/{{baseline}}/{{variant}}/scst.tsv"
    retries: config["captioning"]["retries"]
    conda:
        CORE_ENV
    threads: res("train_captioner", "threads")
    resources:
        mem_mb=res("train_captioner", "mem_mb"),
        runtime=res("train_captioner", "runtime"),
        gpu=res("train_captioner", "gpu"),
    params:
        scst=config["captioning"]["scst"],
        train=config["captioning"]["train"],
        checkpoints=f"{R}/runs/captioning/{{baseline}}/{{variant}}/scst/checkpoints",
    script:
        "../workflow_scripts/train_captioner_scst.py"


rule decode_captions:
    input:
        unpack(caption_inputs),
        model=final_caption_model,
    output:
        captions=f"{R}/runs/captioning/{{baseline}}/{{variant}}/captions_{{split}}.json",
    log:
        f"{R}/logs/decode_captions/{{baseline}}/{{variant}}/{{split}}.log",
    benchmark:
        f"{R}/benchmarks/decode_captions/{{baseline}}/{{variant}}/{{split}}.tsv"
    conda:
        CORE_ENV
    threads: res("decode", "threads")
    resources:
        mem_mb=res("decode", "mem_mb"),
        runtime=res("decode", "runtime"),
        gpu=res("decode", "gpu"),
    params:
        decode=config["captioning"]["decode"],
    script:
        "../workflow_scripts/decode_captions.py"
