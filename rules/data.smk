# Raw annotations -> captions.h5 (+ COCO-format references per split) and vqa.h5.


rule build_caption_store:
    input:
        karpathy=KARPATHY_JSON,
    output:
        store=CAPTIONS_STORE,
        references=expand(f"{R}/data/references_{{split}}.json", split=("train", "val", "test")),
    log:
        f"{R}/logs/build_caption_store.log",
    benchmark:
        f"{R}/benchmarks/build_caption_store.tsv"
    conda:
        CORE_ENV
    threads: res("preprocess", "threads")
    resources:
        mem_mb=res("preprocess", "mem_mb"),
        runtime=res("preprocess", "runtime"),
    params:
        preprocess=config["preprocess"]["captions"],
    script:
        "../workflow_scripts/build_caption_store.py"


rule build_vqa_store:
    input:
        unpack(vqa_extra_questions),
        train_questions=VQA_QUESTIONS["train"],
        val_questions=VQA_QUESTIONS["val"],
        train_annotations=VQA_ANNOTATIONS["train"],
        val_annotations=VQA_ANNOTATIONS["val"],
    output:
        store=VQA_STORE,
    log:
        f"{R}/logs/build_vqa_store.log",
    benchmark:
        f"{R}/benchmarks/build_vqa_store.tsv"
    conda:
        CORE_ENV
    threads: res("preprocess", "threads")
    resources:
        mem_mb=res("preprocess", "mem_mb"),
        runtime=res("preprocess", "runtime"),
    params:
        preprocess=config["preprocess"]["vqa"],
    script:
        "../workflow_scripts/build_vqa_store.py"
