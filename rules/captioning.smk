# Captioning runs {baseline}/{variant}: XE training (then SCST for the Table 2 baselines) and
# beam-search decoding. Training writes its checkpoints under checkpoints/, which is no rule's
# output: Snakemake never deletes it, so a preempted or failed attempt (retried `retries` times)
# resumes from checkpoints/last.pt. model.pt and history.json appear only once training is done.


rule train_captioner:
    input:
        unpack(caption_inputs),
    output:
        model=f"{R}/runs/captioning/{{baseline}}/{{variant}}/s{{seed}}/xe/model.pt",
        history=report(
            f"{R}/runs/captioning/{{baseline}}/{{variant}}/s{{seed}}/xe/history.json",
            category="Training",
            subcategory="{baseline}/{variant}",
            labels={"run": "{baseline}/{variant}", "seed": "{seed}", "stage": "xe"},
        ),
        run=f"{R}/runs/captioning/{{baseline}}/{{variant}}/s{{seed}}/run.json",
    log:
        f"{R}/logs/train_captioner/{{baseline}}/{{variant}}/s{{seed}}/xe.log",
    benchmark:
        f"{R}/benchmarks/train_captioner/{{baseline}}/{{variant}}/s{{seed}}/xe.tsv"
    retries: config["captioning"]["retries"]
    conda:
        CORE_ENV
    threads: res("train_captioner", "threads")
    resources:
        mem_mb=res("train_captioner", "mem_mb"),
        runtime=res("train_captioner", "runtime"),
        gpu=res("train_captioner", "gpu"),
    params:
        model=lambda wc: caption_settings(wc.baseline, "model"),
        train=lambda wc: caption_settings(wc.baseline, "train"),
        # SCST continues the XE optimiser (scst.optimizer_state: carry): keep it in model.pt
        keep_optimizer_state=lambda wc: "scst" in stages(f"captioning/{wc.baseline}/base"),
        checkpoints=f"{R}/runs/captioning/{{baseline}}/{{variant}}/s{{seed}}/xe/checkpoints",
        images_root=raw("images"),
        data_root=ROOT,
    script:
        "../workflow_scripts/train_captioner.py"


rule decode_captions:
    input:
        unpack(caption_inputs),
        model=final_caption_model,
    output:
        captions=f"{R}/runs/captioning/{{baseline}}/{{variant}}/s{{seed}}/captions_{{split}}.json",
    log:
        f"{R}/logs/decode_captions/{{baseline}}/{{variant}}/s{{seed}}/{{split}}.log",
    benchmark:
        f"{R}/benchmarks/decode_captions/{{baseline}}/{{variant}}/s{{seed}}/{{split}}.tsv"
    conda:
        CORE_ENV
    threads: res("decode", "threads")
    resources:
        mem_mb=res("decode", "mem_mb"),
        runtime=res("decode", "runtime"),
        gpu=res("decode", "gpu"),
    params:
        decode=config["captioning"]["decode"],
        data_root=ROOT,
    script:
        "../workflow_scripts/decode_captions.py"


rule caption_image_store:
    input:
        karpathy=KARPATHY_JSON,
        images=image_dirs(),
    output:
        store=f"{R}/images/images_{{purpose}}_{{size}}px.h5",
    log:
        f"{R}/logs/caption_image_store/{{purpose}}_{{size}}px.log",
    benchmark:
        f"{R}/benchmarks/caption_image_store/{{purpose}}_{{size}}px.tsv"
    wildcard_constraints:
        purpose="train|eval",
        size="[0-9]+",
    conda:
        CORE_ENV
    threads: res("image_store", "threads")
    resources:
        mem_mb=res("image_store", "mem_mb"),
        runtime=res("image_store", "runtime"),
    params:
        root=raw_root,
    script:
        "../workflow_scripts/build_image_store.py"
