# Raw inputs: the real datasets (downloads with pinned checksums, then extraction into the raw
# layout of docs/CONTRACTS.md), or the generated demo world in that same layout.

if DEMO:

    rule generate_demo_world:
        output:
            karpathy=KARPATHY_JSON,
            captions=expand(raw("annotations/captions_{s}2014.json"), s=("train", "val")),
            instances=INSTANCES,
            questions=list(VQA_QUESTIONS.values()),
            annotations=list(VQA_ANNOTATIONS.values()),
            images=directory(raw("images")),
        log:
            f"{R}/logs/generate_demo_world.log",
        benchmark:
            f"{R}/benchmarks/generate_demo_world.tsv"
        conda:
            CORE_ENV
        threads: res("demo_world", "threads")
        resources:
            mem_mb=res("demo_world", "mem_mb"),
            runtime=res("demo_world", "runtime"),
        params:
            root=lambda wildcards, output: os.path.dirname(os.path.dirname(output.karpathy)),
            demo=config["data"]["demo"],
        script:
            "../workflow_scripts/generate_demo_world.py"

else:

    # Cluster compute nodes often have no internet: downloads run where Snakemake runs.
    localrules:
        download_archive,

    # The pin and the sources are read from the config when the job runs, not passed as params:
    # a mirror added to `urls` must not make Snakemake redo a finished 13 GB download. A pin
    # that changed is caught by the extraction, which verifies the archive against it.
    rule download_archive:
        output:
            protected(f"{DOWNLOADS}/{{dataset}}.zip"),
        log:
            f"{R}/logs/download/{{dataset}}.log",
        benchmark:
            f"{R}/benchmarks/download/{{dataset}}.tsv"
        conda:
            CORE_ENV
        threads: res("download", "threads")
        resources:
            mem_mb=res("download", "mem_mb"),
            runtime=res("download", "runtime"),
        script:
            "../workflow_scripts/download_archive.py"

    # A plain file (model weights): verified like an archive (same script), kept as it is.
    rule download_file:
        output:
            protected(f"{DOWNLOADS}/{{dataset}}.{{suffix}}"),
        log:
            f"{R}/logs/download/{{dataset}}.{{suffix}}.log",
        benchmark:
            f"{R}/benchmarks/download/{{dataset}}.{{suffix}}.tsv"
        wildcard_constraints:
            suffix="bin|pkl|pth|pt",
        conda:
            CORE_ENV
        threads: res("download", "threads")
        resources:
            mem_mb=res("download", "mem_mb"),
            runtime=res("download", "runtime"),
        script:
            "../workflow_scripts/download_archive.py"

    localrules:
        download_file,

    # One extraction rule per download: each archive provides its own files of the raw layout,
    # and is verified against its pin first (a zip put into the downloads folder by hand too).
    for _key, _spec in config["downloads"].items():
        if "extract_to" not in _spec:
            continue  # a plain file (download_file)

        rule:
            name:
                f"extract_{_key}"
            input:
                archive_path(_key),
            output:
                provided_outputs(_key),
            log:
                f"{R}/logs/extract/{_key}.log",
            benchmark:
                f"{R}/benchmarks/extract/{_key}.tsv"
            conda:
                CORE_ENV
            threads: res("download", "threads")
            resources:
                mem_mb=res("download", "mem_mb"),
                runtime=res("download", "runtime"),
            params:
                key=_key,
                extract_to=_spec["extract_to"],
                provides=_spec["provides"],
                members=_spec.get("members"),
            script:
                "../workflow_scripts/extract_archive.py"
