# Self-critical sequence training (Table 2): the XE model of a run, trained further on the CIDEr-D
# reward of its own samples. Checkpoints stay outside the outputs (resume on retry), as for XE.


rule train_captioner_scst:
    input:
        unpack(caption_inputs),
        xe_model=f"{R}/runs/captioning/{{baseline}}/{{variant}}/s{{seed}}/xe/model.pt",
    output:
        model=f"{R}/runs/captioning/{{baseline}}/{{variant}}/s{{seed}}/scst/model.pt",
        history=f"{R}/runs/captioning/{{baseline}}/{{variant}}/s{{seed}}/scst/history.json",
    log:
        f"{R}/logs/train_captioner/{{baseline}}/{{variant}}/s{{seed}}/scst.log",
    benchmark:
        f"{R}/benchmarks/train_captioner/{{baseline}}/{{variant}}/s{{seed}}/scst.tsv"
    retries: config["captioning"]["retries"]
    conda:
        CORE_ENV
    threads: res("train_captioner", "threads")
    resources:
        mem_mb=res("train_captioner", "mem_mb"),
        runtime=res("train_captioner", "runtime"),
        gpu=res("train_captioner", "gpu"),
    params:
        scst=lambda wc: caption_settings(wc.baseline, "scst"),
        checkpoints=f"{R}/runs/captioning/{{baseline}}/{{variant}}/s{{seed}}/scst/checkpoints",
    script:
        "../workflow_scripts/train_captioner_scst.py"
