# Visual features, computed once and shared by every run: CNN grid and object regions.


rule extract_grid_features:
    input:
        karpathy=KARPATHY_JSON,
        images=image_dirs(),
    output:
        store=GRID_STORE,
    log:
        f"{R}/logs/extract_grid_features.log",
    benchmark:
        f"{R}/benchmarks/extract_grid_features.tsv"
    conda:
        CORE_ENV
    threads: res("grid_features", "threads")
    resources:
        mem_mb=res("grid_features", "mem_mb"),
        runtime=res("grid_features", "runtime"),
        gpu=res("grid_features", "gpu"),
    params:
        grid=config["features"]["grid"],
        root=raw_root,
    script:
        "../workflow_scripts/extract_grid_features.py"


rule extract_region_features:
    input:
        unpack(region_inputs),
    output:
        store=REGION_STORE,
    log:
        f"{R}/logs/extract_region_features.log",
    benchmark:
        f"{R}/benchmarks/extract_region_features.tsv"
    conda:
        "../envs/detectron2.yaml" if REGION_SOURCE == "detectron2" else CORE_ENV
    threads: res(REGION_RESOURCES, "threads")
    resources:
        mem_mb=res(REGION_RESOURCES, "mem_mb"),
        runtime=res(REGION_RESOURCES, "runtime"),
        gpu=res(REGION_RESOURCES, "gpu"),
    params:
        regions=REGION_SETTINGS,
        root=raw_root,
    script:
        "../workflow_scripts/extract_region_features.py"
