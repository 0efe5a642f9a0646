# Textual concepts: a MIL concept extractor (Fang et al.) trained once on the captions and the
# grid features, then keeping the top k words per image, k = the number of visual features they
# are paired with (49 or 36). One detector labels every concept store (grid, regions, test2015).

CONCEPT_DETECTOR = f"{R}/features/concept_detector.pt"


rule train_concept_detector:
    input:
        captions=CAPTIONS_STORE,
        features=GRID_STORE,
    output:
        detector=CONCEPT_DETECTOR,
    log:
        f"{R}/logs/train_concept_detector.log",
    benchmark:
        f"{R}/benchmarks/train_concept_detector.tsv"
    conda:
        CORE_ENV
    threads: res("concepts", "threads")
    resources:
        mem_mb=res("concepts", "mem_mb"),
        runtime=res("concepts", "runtime"),
        gpu=res("concepts", "gpu"),
    params:
        concepts=config["features"]["concepts"],
        k=config["features"]["concepts"]["k"],
    script:
        "../workflow_scripts/train_concept_detector.py"


rule build_concept_store:
    input:
        detector=CONCEPT_DETECTOR,
        features=GRID_STORE,
    output:
        store=f"{R}/features/concepts_{{kind}}.h5",
    log:
        f"{R}/logs/build_concept_store/{{kind}}.log",
    benchmark:
        f"{R}/benchmarks/build_concept_store/{{kind}}.tsv"
    conda:
        CORE_ENV
    threads: res("concepts", "threads")
    resources:
        mem_mb=res("concepts", "mem_mb"),
        runtime=res("concepts", "runtime"),
        gpu=res("concepts", "gpu"),
    params:
        concepts=config["features"]["concepts"],
        k=lambda wc: config["features"]["concepts"]["k"][wc.kind],
    script:
        "../workflow_scripts/build_concept_store.py"
