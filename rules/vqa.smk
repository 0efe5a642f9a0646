# VQA runs {baseline}/{variant} of Table 3 (Up-Down, BAN): train on the VQA v2 train answers,
# select the epoch by the official val accuracy, answer val and score it (overall, per answer type
# and question type). With vqa.server.enabled, each run and seed also trains on train + val and
# answers VQA v2's test2015 questions: the files to upload to the evaluation server (test-dev,
# test-std), whose images get feature and concept stores of their own. Checkpoints live outside
# the outputs, as for captioning (a preempted or failed attempt resumes on retry).

VQA_SERVER = config["vqa"]["server"]["enabled"]
# Questions of the evaluation server (v2_Questions_Test_mscoco.zip); test-dev is part of test2015.
VQA_TEST_QUESTIONS = {
    "test-dev": raw("vqa/v2_OpenEnded_mscoco_test-dev2015_questions.json"),
    "test-std": raw("vqa/v2_OpenEnded_mscoco_test2015_questions.json"),
}
TEST_IMAGES = raw("test2015")  # COCO test2015.zip's folder (the demo's test set: its own images)
VQA_TEST_STORE = f"{R}/data/vqa_test2015.h5"
TEST_GRID_STORE = f"{R}/features/grid_{config['features']['grid']['backbone']}_test2015.h5"
TEST_REGION_STORE = f"{R}/features/regions_{REGION_SOURCE}_test2015.h5"
VQA_RUN = f"{R}/runs/vqa/{{baseline}}/{{variant}}/s{{seed}}"
VQA_SERVER_TRAIN = config["vqa"]["server"].get("train", {})  # over each baseline's vqa.train

# The test2015 regions come from the source of the Karpathy images' regions: the released
# test2015_36 TSVs, the test images (bottom_up, detectron2), or given boxes (only the demo world
# has boxes for its test images; COCO has none for test2015).
_REGION_SOURCE = REGION_SOURCE  # features.regions.source, `auto` resolved (common.smk)
TEST_REGION_INPUTS = {"questions": VQA_TEST_QUESTIONS["test-std"]}
if _REGION_SOURCE == "bottom_up_tsv":
    TEST_REGION_INPUTS["tsv_dir"] = raw("bottom_up/test2015_36")
else:
    TEST_REGION_INPUTS["images"] = TEST_IMAGES
if _REGION_SOURCE == "bottom_up":
    TEST_REGION_INPUTS["weights"] = bottom_up_weights()
if _REGION_SOURCE == "boxes":
    TEST_REGION_INPUTS["instances"] = [raw("annotations/instances_test2015.json")]
    if VQA_SERVER and not DEMO:
        raise ValueError(
            "features.regions.source: boxes reads COCO instance boxes, which test2015 does not "
            "have; use bottom_up_tsv (test2015_36.zip) or bottom_up for the evaluation-server "
            "runs, or set vqa.server.enabled: false"
        )
# Every server file of the selected tables' VQA runs and seeds (`snakemake vqa_server`).
VQA_SERVER_FILES = [
    f"{run_dir(run, seed)}/server_{split}.json"
    for run in (selected_runs("vqa") if VQA_SERVER else [])
    for seed in seeds(run)
    for split in ("test-dev", "test-std")
]


rule train_vqa:
    input:
        unpack(vqa_inputs),
        val_questions=VQA_QUESTIONS["val"],
        val_annotations=VQA_ANNOTATIONS["val"],
    output:
        model=f"{VQA_RUN}/model.pt",
        history=report(
            f"{VQA_RUN}/history.json",
            category="Training",
            subcategory="vqa/{baseline}/{variant}",
            labels={"run": "vqa/{baseline}/{variant}", "seed": "{seed}", "stage": "train"},
        ),
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
        model=lambda wc: vqa_settings(wc.baseline, "model"),
        train=lambda wc: vqa_settings(wc.baseline, "train"),
        checkpoints=f"{VQA_RUN}/checkpoints",
    script:
        "../workflow_scripts/train_vqa.py"


rule answer_vqa:
    input:
        unpack(vqa_inputs),
        model=f"{VQA_RUN}/model.pt",
    output:
        answers=f"{VQA_RUN}/answers_{{split}}.json",
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
    params:
        train=lambda wc: vqa_settings(wc.baseline, "train"),  # val_batch_size, device
    script:
        "../workflow_scripts/answer_vqa.py"


rule evaluate_vqa:
    input:
        answers=f"{VQA_RUN}/answers_{{split}}.json",
        questions=lambda wc: VQA_QUESTIONS[wc.split],
        annotations=lambda wc: VQA_ANNOTATIONS[wc.split],
    output:
        metrics=report(
            f"{VQA_RUN}/metrics_{{split}}.json",
            category="Metrics",
            subcategory="vqa/{baseline}/{variant}",
            labels={"run": "vqa/{baseline}/{variant}", "seed": "{seed}", "split": "{split}"},
        ),
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


# ------------------------------------------------------------------ evaluation server (test2015)
if VQA_SERVER:
    if DEMO:

        rule generate_demo_test_set:
            output:
                test_dev=VQA_TEST_QUESTIONS["test-dev"],
                test_std=VQA_TEST_QUESTIONS["test-std"],
                instances=raw("annotations/instances_test2015.json"),
                images=directory(TEST_IMAGES),
            log:
                f"{R}/logs/generate_demo_test_set.log",
            benchmark:
                f"{R}/benchmarks/generate_demo_test_set.tsv"
            conda:
                CORE_ENV
            threads: res("demo_world", "threads")
            resources:
                mem_mb=res("demo_world", "mem_mb"),
                runtime=res("demo_world", "runtime"),
            params:
                root=lambda wildcards, output: os.path.dirname(os.path.dirname(output.test_std)),
                demo=config["data"]["demo"],
                num_images=config["vqa"]["server"]["demo_images"],
            script:
                "../workflow_scripts/generate_demo_test_set.py"

    rule build_vqa_test_store:
        input:
            test_std=VQA_TEST_QUESTIONS["test-std"],
            test_dev=VQA_TEST_QUESTIONS["test-dev"],
            vocab=VQA_STORE,
        output:
            store=VQA_TEST_STORE,
        log:
            f"{R}/logs/build_vqa_test_store.log",
        benchmark:
            f"{R}/benchmarks/build_vqa_test_store.tsv"
        conda:
            CORE_ENV
        threads: res("preprocess", "threads")
        resources:
            mem_mb=res("preprocess", "mem_mb"),
            runtime=res("preprocess", "runtime"),
        script:
            "../workflow_scripts/build_vqa_test_store.py"

    rule extract_test_grid_features:
        input:
            questions=VQA_TEST_QUESTIONS["test-std"],
            images=TEST_IMAGES,
        output:
            store=TEST_GRID_STORE,
        log:
            f"{R}/logs/extract_test_grid_features.log",
        benchmark:
            f"{R}/benchmarks/extract_test_grid_features.tsv"
        conda:
            CORE_ENV
        threads: res("grid_features", "threads")
        resources:
            mem_mb=res("grid_features", "mem_mb"),
            runtime=res("grid_features", "runtime"),
            gpu=res("grid_features", "gpu"),
        params:
            grid=config["features"]["grid"],
        script:
            "../workflow_scripts/extract_test_grid_features.py"

    rule extract_test_region_features:
        input:
            **TEST_REGION_INPUTS,
        output:
            store=TEST_REGION_STORE,
        log:
            f"{R}/logs/extract_test_region_features.log",
        benchmark:
            f"{R}/benchmarks/extract_test_region_features.tsv"
        conda:
            "../envs/detectron2.yaml" if REGION_SOURCE == "detectron2" else CORE_ENV
        threads: res(REGION_RESOURCES, "threads")
        resources:
            mem_mb=res(REGION_RESOURCES, "mem_mb"),
            runtime=res(REGION_RESOURCES, "runtime"),
            gpu=res(REGION_RESOURCES, "gpu"),
        params:
            regions=REGION_SETTINGS,
        script:
            "../workflow_scripts/extract_test_region_features.py"

    rule build_test_concept_store:
        input:
            detector=CONCEPT_DETECTOR,
            test_features=TEST_GRID_STORE,
        output:
            store=f"{R}/features/concepts_{{kind}}_test2015.h5",
        log:
            f"{R}/logs/build_test_concept_store/{{kind}}.log",
        benchmark:
            f"{R}/benchmarks/build_test_concept_store/{{kind}}.tsv"
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
            "../workflow_scripts/build_test_concept_store.py"

    rule train_vqa_trainval:
        input:
            unpack(vqa_inputs),
        output:
            model=f"{VQA_RUN}/trainval/model.pt",
            history=report(
                f"{VQA_RUN}/trainval/history.json",
                category="Training",
                subcategory="vqa/{baseline}/{variant}",
                labels={"run": "vqa/{baseline}/{variant}", "seed": "{seed}", "stage": "trainval"},
            ),
        log:
            f"{R}/logs/train_vqa_trainval/{{baseline}}/{{variant}}/s{{seed}}.log",
        benchmark:
            f"{R}/benchmarks/train_vqa_trainval/{{baseline}}/{{variant}}/s{{seed}}.tsv"
        retries: config["vqa"]["retries"]
        conda:
            CORE_ENV
        threads: res("train_vqa", "threads")
        resources:
            mem_mb=res("train_vqa", "mem_mb"),
            runtime=res("train_vqa", "runtime"),
            gpu=res("train_vqa", "gpu"),
        params:
            model=lambda wc: vqa_settings(wc.baseline, "model"),
            train=lambda wc: {**vqa_settings(wc.baseline, "train"), **VQA_SERVER_TRAIN},
            checkpoints=f"{VQA_RUN}/trainval/checkpoints",
        script:
            "../workflow_scripts/train_vqa.py"

    rule answer_vqa_server:
        input:
            vqa=VQA_TEST_STORE,
            features=TEST_REGION_STORE,
            concepts=lambda wc: (
                f"{R}/features/concepts_{config['vqa']['baselines'][wc.baseline]['features']}"
                "_test2015.h5"
            ),
            test_dev=VQA_TEST_QUESTIONS["test-dev"],
            test_std=VQA_TEST_QUESTIONS["test-std"],
            model=f"{VQA_RUN}/trainval/model.pt",
        output:
            test_dev=f"{VQA_RUN}/server_test-dev.json",
            test_std=f"{VQA_RUN}/server_test-std.json",
        log:
            f"{R}/logs/answer_vqa_server/{{baseline}}/{{variant}}/s{{seed}}.log",
        benchmark:
            f"{R}/benchmarks/answer_vqa_server/{{baseline}}/{{variant}}/s{{seed}}.tsv"
        conda:
            CORE_ENV
        threads: res("decode", "threads")
        resources:
            mem_mb=res("decode", "mem_mb"),
            runtime=res("decode", "runtime"),
            gpu=res("decode", "gpu"),
        params:
            train=lambda wc: {**vqa_settings(wc.baseline, "train"), **VQA_SERVER_TRAIN},
        script:
            "../workflow_scripts/answer_vqa_server.py"

    localrules:
        vqa_server,

    # `snakemake vqa_server`: every server file of the selected tables' VQA runs and seeds.
    rule vqa_server:
        input:
            VQA_SERVER_FILES,
