# The demo world's pre-training, its ImageNet / Visual Genome: labelled scenes drawn from the
# world's generator but disjoint from its images (no captions, no questions), and the small
# backbone trained on them whose checkpoint the grid and region extractors load
# (features.*.weights_path). Real data has no such rules: its backbones come pre-trained.

if DEMO:

    rule generate_demo_pretrain_scenes:
        output:
            labels=raw("pretrain/labels.json"),
            images=directory(raw("pretrain/images")),
        log:
            f"{R}/logs/generate_demo_pretrain_scenes.log",
        benchmark:
            f"{R}/benchmarks/generate_demo_pretrain_scenes.tsv"
        conda:
            CORE_ENV
        threads: res("demo_world", "threads")
        resources:
            mem_mb=res("demo_world", "mem_mb"),
            runtime=res("demo_world", "runtime"),
        params:
            demo=config["data"]["demo"],
            scenes=pretrain_settings("scenes"),
        script:
            "../workflow_scripts/generate_demo_pretrain_scenes.py"

    rule pretrain_demo_backbone:
        input:
            labels=raw("pretrain/labels.json"),
            images=raw("pretrain/images"),
        output:
            checkpoint=DEMO_BACKBONE,
            metrics=DEMO_BACKBONE_METRICS,
        log:
            f"{R}/logs/pretrain_demo_backbone.log",
        benchmark:
            f"{R}/benchmarks/pretrain_demo_backbone.tsv"
        conda:
            CORE_ENV
        threads: res("pretrain", "threads")
        resources:
            mem_mb=res("pretrain", "mem_mb"),
            runtime=res("pretrain", "runtime"),
            gpu=res("pretrain", "gpu"),
        params:
            train=pretrain_settings("train"),
            regions=config["features"]["regions"],
        script:
            "../workflow_scripts/pretrain_demo_backbone.py"
