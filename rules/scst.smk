# Self-critical sequence training (Table 2): the XE model of a run, trained further on the CIDEr-D
# reward of its own samples. Checkpoints stay outside the outputs (resume on retry), as for XE.
# The reward's document frequencies (training captions, <eos> counted) are computed once per
# captions store by their own rule; every SCST run only reads the file.

SCST_DOCUMENT_FREQUENCY = f"{R}/data/cider_df_train.npz"


rule cider_document_frequency:
    input:
        captions=CAPTIONS_STORE,
    output:
        df=SCST_DOCUMENT_FREQUENCY,
    log:
        f"{R}/logs/cider_document_frequency.log",
    benchmark:
        f"{R}/benchmarks/cider_document_frequency.tsv"
    conda:
        CORE_ENV
    threads: res("preprocess", "threads")
    resources:
        mem_mb=res("preprocess", "mem_mb"),
        runtime=res("preprocess", "runtime"),
    params:
        repo=REPO,
    shell:
        "PYTHONPATH={params.repo:q} python -m mia.captioning.scst"
        " --captions {input.captions:q} --out {output.df:q} > {log:q} 2>&1"


rule train_captioner_scst:
    input:
        unpack(caption_inputs),
        xe_model=f"{R}/runs/captioning/{{baseline}}/{{variant}}/s{{seed}}/xe/model.pt",
        document_frequency=SCST_DOCUMENT_FREQUENCY,
    output:
        model=f"{R}/runs/captioning/{{baseline}}/{{variant}}/s{{seed}}/scst/model.pt",
        history=report(
            f"{R}/runs/captioning/{{baseline}}/{{variant}}/s{{seed}}/scst/history.json",
            category="Training",
            subcategory="{baseline}/{variant}",
            labels={"run": "{baseline}/{variant}", "seed": "{seed}", "stage": "scst"},
        ),
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
