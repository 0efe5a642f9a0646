# Which jobs exist: small functions of the config. Rules call these; nothing here does work.

import os
import sys

from mia.config_checks import baseline_settings
from mia.data.pins import download_name, effective_pin, read_lock
from mia.features.region_source import resolve_region_source
from mia.variants import VARIANT_PATTERN


envvars:
    "PATH",


# Shell rules call `python -m mia ...`. Under --use-conda the job's environment puts its own
# python first; otherwise the python running Snakemake (the project's venv) must be the one found,
# even when the venv was not activated. Jobs, also on Slurm, inherit this PATH.
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])

REPO = workflow.basedir  # the checkout whose `mia` package every script and shell command runs
NAME = config["name"]
R = f"results/{NAME}"  # every output of this config lives under here
ROOT = config["data"]["root"]  # raw data in the layout of docs/CONTRACTS.md
DOWNLOADS = config["data"].get("downloads_dir", "resources/downloads")
DEMO = config["data"]["source"] == "demo"
# Copies the user registered (mia data register): where they are, and their own pins for files
# with no published checksum. Local to this downloads folder, never part of config.yaml.
USER_PINS = {} if DEMO else read_lock(DOWNLOADS)
# features.regions.source, with `auto` resolved: the released TSVs where the user has them
# (pinned or registered), else the bottom-up extractor on the images.
REGION_SOURCE = resolve_region_source(
    config["features"]["regions"]["source"],
    config["downloads"],
    USER_PINS,
    server_enabled=config["vqa"]["server"]["enabled"],
)
REGION_SETTINGS = {**config["features"]["regions"], "source": REGION_SOURCE}
CORE_ENV = "../envs/core.yaml"
EVAL_ENV = "../envs/evaluation.yaml"


wildcard_constraints:
    task="captioning|vqa",
    baseline="[a-z][a-z0-9_]*",
    variant=VARIANT_PATTERN,
    split="train|val|test",
    stage="xe|scst",
    kind="grid|regions",
    seed="[0-9]+",
    dataset="[a-z][a-z0-9_]*",


def res(rule_name, key):
    """A resource of `rule_name` from config `resources` (gpu defaults to 0)."""
    return config["resources"][rule_name].get(key, 0)


# ------------------------------------------------------------------ runs and tables
def selected_tables():
    """The tables the report shows, in config order; an unknown name is a config error."""
    names = config["report"]["tables"]
    unknown = [t for t in names if t not in config["tables"]]
    if unknown:
        raise ValueError(
            f"report.tables: {unknown} not defined under tables: " f"{sorted(config['tables'])}"
        )
    return names


def selected_runs(task=None):
    """Run ids `{task}/{baseline}/{variant}` of the selected tables, each once, in order."""
    seen = {}
    for table in selected_tables():
        for run in config["tables"][table]["runs"]:
            if task is None or run.split("/")[0] == task:
                seen.setdefault(run, None)
    for run in seen:
        run_task, baseline, _ = run.split("/")
        section = "captioning" if run_task == "captioning" else "vqa"
        if baseline not in config[section]["baselines"]:
            raise ValueError(
                f"tables: run {run!r} names baseline {baseline!r}, which is not "
                f"under {section}.baselines: {sorted(config[section]['baselines'])}"
            )
    return list(seen)


def seeds(run):
    """The training seeds of a run: `seeds.runs[run]`, else `seeds.default`."""
    return list(config["seeds"]["runs"].get(run, config["seeds"]["default"]))


def run_dir(run, seed):
    """One trained replicate: results/<name>/runs/{task}/{baseline}/{variant}/s{seed}."""
    return f"{R}/runs/{run}/s{seed}"


def wildcard_run(wildcards):
    return f"{wildcards.task}/{wildcards.baseline}/{wildcards.variant}"


def caption_stage(baseline):
    """The last training stage of a captioning baseline: `scst` when it has one, else `xe`."""
    return config["captioning"]["baselines"][baseline]["stages"][-1]


def caption_settings(baseline, section):
    """`captioning.<section>` (model, train or scst) with the baseline's own overrides on top."""
    return baseline_settings(config, "captioning", baseline, section)


def final_caption_model(wildcards):
    run = f"captioning/{wildcards.baseline}/{wildcards.variant}"
    return f"{run_dir(run, wildcards.seed)}/{caption_stage(wildcards.baseline)}/model.pt"


def eval_split(run):
    task = run.split("/")[0]
    return (
        config["captioning"]["decode"]["split"]
        if task == "captioning"
        else config["vqa"]["eval_split"]
    )


def stages(run):
    """Training stages of a run, in order: ["xe"], ["xe", "scst"], or ["train"] for VQA."""
    task, baseline, _ = run.split("/")
    if task == "vqa":
        return ["train"]
    return list(config["captioning"]["baselines"][baseline]["stages"])


def run_files(run, seed):
    """The files the report reads of one replicate (mia.report's run-files layout)."""
    task, baseline, variant = run.split("/")
    d, split = run_dir(run, seed), eval_split(run)
    if task == "vqa":
        histories = {"train": f"{d}/history.json"}
        benchmarks = {"train": f"{R}/benchmarks/train_vqa/{baseline}/{variant}/s{seed}.tsv"}
        per_item = None
        predictions = f"{d}/answers_{split}.json"
        models = {}
    else:
        histories = {st: f"{d}/{st}/history.json" for st in stages(run)}
        benchmarks = {
            st: f"{R}/benchmarks/train_captioner/{baseline}/{variant}/s{seed}/{st}.tsv"
            for st in stages(run)
        }
        per_item = f"{d}/per_image_{split}.json"
        predictions = f"{d}/captions_{split}.json"
        # which epoch a stage that starts from trained weights (SCST) published: 0 = kept XE's
        models = {st: f"{d}/{st}/model.pt" for st in stages(run) if st != "xe"}
    return {
        "metrics": f"{d}/metrics_{split}.json",
        "per_item": per_item,
        "histories": histories,
        "benchmarks": benchmarks,
        "predictions": predictions,
        "models": models,
    }


FIGURE5_RUNS = [f"captioning/visual_attention/mia_n{n}" for n in (1, 3, 5)]


def selected_figures():
    return list(config["report"].get("figures", []))


def figure5_run_dirs():
    """The runs Figure 5 draws (VA w/ MIA, N = 1, 3, 5), each at its first seed."""
    return [run_dir(run, seeds(run)[0]) for run in FIGURE5_RUNS]


def figure5_models():
    stage = caption_stage("visual_attention")
    return [f"{d}/{stage}/model.pt" for d in figure5_run_dirs()]


def report_runs():
    """The runs the report reads: the tables' runs, plus Figure 4's and Figure 5's."""
    runs = selected_runs()
    if "figure4" in selected_figures():  # the N sweep, and the baselines it is drawn against
        sweep = config["tables"]["figure4_iterations"]["runs"]
        models = dict.fromkeys(run.rsplit("/", 1)[0] for run in sweep)
        runs += sweep + [f"{model}/base" for model in models]
    return list(dict.fromkeys(runs))


def report_run_files():
    """{run: {seed: files}} for every run the report reads."""
    return {run: {seed: run_files(run, seed) for seed in seeds(run)} for run in report_runs()}


SERVER_SPLITS = ("test-dev", "test-std")


def server_score_files():
    """The VQA evaluation server's results the user fetched into a run's folder
    (`server_scores_test-dev.json`, `server_scores_test-std.json`; see README), where present:
    {run: {seed: {split: path}}}. A new file changes the report's inputs, so it is redrawn."""
    found = {}
    for run in selected_runs("vqa"):
        for seed in seeds(run):
            for split in SERVER_SPLITS:
                path = f"{run_dir(run, seed)}/server_scores_{split}.json"
                if os.path.exists(path):
                    found.setdefault(run, {}).setdefault(seed, {})[split] = path
    return found


def report_inputs(wildcards=None):
    """Every file the report reads (Snakemake's inputs of render_report)."""
    files = [f for per_seed in report_run_files().values() for f in per_seed.values()]
    inputs = {
        "metrics": [f["metrics"] for f in files],
        "per_item": [f["per_item"] for f in files if f["per_item"]],
        "histories": [p for f in files for p in f["histories"].values()],
        "benchmarks": [p for f in files for p in f["benchmarks"].values()],
        "predictions": [f["predictions"] for f in files],
        "models": [p for f in files for p in f["models"].values()],
    }
    if "figure5" in selected_figures():
        inputs["figure5"] = f"{R}/figures/figure5"
    if any(r.startswith("vqa/") for r in report_runs()):
        inputs["vqa_annotations"] = VQA_ANNOTATIONS[config["vqa"]["eval_split"]]
    if uses_demo_backbone():
        inputs["backbone_metrics"] = DEMO_BACKBONE_METRICS
    if DEMO:
        inputs["concept_quality"] = CONCEPT_QUALITY
    scores = server_score_files()
    if scores:
        inputs["server_scores"] = [
            p for s in scores.values() for f in s.values() for p in f.values()
        ]
    return inputs


CAPTION_SPLIT = config["captioning"]["decode"]["split"]
CAPTIONS_JOB = config["evaluation"].get("captions_job", "per_run")  # rules/evaluate.smk
# Every (run, seed) whose captions rule evaluate_captions scores in one job (per_split).
CAPTION_EVAL_RUNS = [
    (run, seed)
    for run in report_runs()
    if run.startswith("captioning/") and eval_split(run) == CAPTION_SPLIT
    for seed in seeds(run)
]


def caption_eval_file(run, seed, name):
    """A captioning run's file of the decoded split: captions, metrics or per_image."""
    return f"{run_dir(run, seed)}/{name}_{CAPTION_SPLIT}.json"


# ------------------------------------------------------------------ raw data and stores
def raw(path):
    return f"{ROOT}/{path}"


KARPATHY_JSON = raw("karpathy/dataset_coco.json")
VQA_QUESTIONS = {
    s: raw(f"vqa/v2_OpenEnded_mscoco_{s}2014_questions.json") for s in ("train", "val")
}
VQA_ANNOTATIONS = {s: raw(f"vqa/v2_mscoco_{s}2014_annotations.json") for s in ("train", "val")}


def vqa_extra_questions(wildcards):
    """The test question files `preprocess.vqa` reads for its vocabulary or BAN's tf-idf
    (test2015, test-dev2015: the references' dictionary), keyed `extra_<name>`."""
    cfg = config["preprocess"]["vqa"]
    names = [*cfg.get("vocabulary_questions", []), *cfg.get("tfidf_questions", [])]
    extra = [n for n in dict.fromkeys(names) if n not in ("train", "val")]
    if extra and DEMO and not config["vqa"]["server"]["enabled"]:
        raise ValueError(
            f"preprocess.vqa reads the {extra} questions, which the demo world only generates "
            "with vqa.server.enabled: true; enable it or keep those lists to [train, val]"
        )
    return {f"extra_{n}": raw(f"vqa/v2_OpenEnded_mscoco_{n}_questions.json") for n in extra}


INSTANCES = [raw(f"annotations/instances_{s}2014.json") for s in ("train", "val")]


def image_dirs():
    """Image folders: the demo world's one folder, or COCO's train2014/ and val2014/."""
    if DEMO:
        return [raw("images")]
    return [raw("images/train2014"), raw("images/val2014")]


def bottom_up_dir():
    return raw("bottom_up/trainval_36")


GRID_STORE = f"{R}/features/grid_{config['features']['grid']['backbone']}.h5"
REGION_STORE = f"{R}/features/regions_{REGION_SOURCE}.h5"
CAPTIONS_STORE = f"{R}/data/captions.h5"
VQA_STORE = f"{R}/data/vqa.h5"


def feature_store(kind):
    return GRID_STORE if kind == "grid" else REGION_STORE


# ------------------------------------------------------------------ the demo world's pre-training
DEMO_BACKBONE = f"{R}/pretrain/backbone.pt"  # rule pretrain_demo_backbone (rules/pretrain.smk)
DEMO_BACKBONE_METRICS = f"{R}/pretrain/backbone_metrics.json"
DEMO_SCENES = raw("annotations/demo_scenes.json")  # what the demo world drew (its ground truth)
CONCEPT_QUALITY = f"{R}/features/concept_quality.json"


def local_weights(settings):
    """The local weights file a backbone config loads (`pretrained` with `weights_path`), as an
    input of the jobs that load it, so they rerun when the weights change (and the demo's
    weights are built by their own job first)."""
    if settings.get("pretrained") and settings.get("weights_path"):
        return [settings["weights_path"]]
    return []


def pretrain_settings(section):
    """`pretrain.<section>` (scenes or train) of a demo config; {} takes the defaults."""
    return (config.get("pretrain") or {}).get(section) or {}


def uses_demo_backbone():
    """Whether a feature extractor loads the demo backbone this workflow pre-trains."""
    features = config["features"]
    return DEMO and DEMO_BACKBONE in local_weights(features["grid"]) + local_weights(
        features["regions"]
    )


def fine_tunes_cnn(baseline):
    return caption_settings(baseline, "model").get("fine_tune_cnn_after_epoch") is not None


def image_store_path(purpose, size):
    """The fine-tuning images, decoded once by caption_image_store: train at the CNN's resize,
    eval (val + test) at its crop."""
    return f"{R}/images/images_{purpose}_{size}px.h5"


def caption_inputs(wildcards):
    """The stores a captioning run reads: captions, its features, and the matching concepts; a
    run that fine-tunes its CNN also reads the images, from the image stores (decoded once)."""
    kind = config["captioning"]["baselines"][wildcards.baseline]["features"]
    inputs = {
        "captions": CAPTIONS_STORE,
        "features": feature_store(kind),
        "concepts": f"{R}/features/concepts_{kind}.h5",
    }
    if fine_tunes_cnn(wildcards.baseline):
        cnn = caption_settings(wildcards.baseline, "model").get("cnn") or {}
        inputs.update(
            image_train=image_store_path("train", cnn.get("resize", 256)),
            image_eval=image_store_path("eval", cnn.get("crop", 224)),
            cnn_weights=local_weights(cnn),
        )
    return inputs


def vqa_settings(baseline, section):
    """`vqa.<section>` (model or train) with the baseline's own overrides on top."""
    return baseline_settings(config, "vqa", baseline, section)


def vqa_inputs(wildcards):
    """A VQA run's stores, plus GloVe vectors for the question words when the config asks."""
    kind = config["vqa"]["baselines"][wildcards.baseline]["features"]
    inputs = {
        "vqa": VQA_STORE,
        "features": feature_store(kind),
        "concepts": f"{R}/features/concepts_{kind}.h5",
    }
    if config["vqa"].get("glove"):
        inputs["glove"] = raw(config["vqa"]["glove"])
    return inputs


def download_spec(key):
    spec = config["downloads"].get(key)
    if spec is None:
        raise ValueError(f"downloads: no entry {key!r}; known: {sorted(config['downloads'])}")
    return spec


def archive_path(key):
    """Where an archive download lands: {downloads_dir}/<key>.zip."""
    return f"{DOWNLOADS}/{download_name(key, download_spec(key))}"


def download_pin(key):
    """The pin a download is checked against (config.yaml's, else the user's), or None."""
    return effective_pin(key, download_spec(key), USER_PINS)


def pinned_inputs():
    """Each download the selected runs read, with its pin and who pinned it (for the report)."""
    used = [k for k in config["downloads"] if download_used(k)]
    rows = []
    for key in used:
        pin = download_pin(key)
        rows.append(
            {
                "key": key,
                "checksum": pin.checksum if pin else None,
                "size": pin.size if pin else None,
                "pinned_by": pin.by if pin else None,
                "source": USER_PINS.get(key, {}).get("source"),
            }
        )
    return rows


def download_used(key):
    """Whether the workflow reads this download under this config (as planned, not as run)."""
    if DEMO:
        return False
    if key.startswith("bottom_up"):
        return REGION_SOURCE == "bottom_up_tsv" and (
            key == "bottom_up_features" or config["vqa"]["server"]["enabled"]
        )
    if key == "coco_annotations_2014":
        return REGION_SOURCE == "boxes"
    if key.startswith("bottom_up_frcnn_weights"):
        settings = config["features"]["regions"].get("bottom_up") or {}
        return (
            REGION_SOURCE == "bottom_up"
            and not settings.get("weights_path")
            and key == settings.get("weights", "bottom_up_frcnn_weights")
        )
    if key in ("vqa_test_questions", "coco_test2015_images"):
        return config["vqa"]["server"]["enabled"]
    if key == "glove_6b":
        return bool(config["vqa"].get("glove"))
    return True


def provided_outputs(key):
    """The raw-layout paths an archive provides; a trailing slash marks a folder."""
    return [
        directory(raw(p[:-1])) if p.endswith("/") else raw(p)
        for p in download_spec(key)["provides"]
    ]


def region_inputs(wildcards):
    """bottom_up_tsv reads the released TSVs; bottom_up the images and the detector's weights;
    boxes/detectron2 read the images (+ COCO boxes)."""
    source = REGION_SOURCE
    if source == "bottom_up_tsv":
        return {"karpathy": KARPATHY_JSON, "tsv_dir": bottom_up_dir()}
    inputs = {"karpathy": KARPATHY_JSON, "images": image_dirs()}
    if source == "boxes":
        inputs["instances"] = INSTANCES
        inputs["weights"] = local_weights(config["features"]["regions"])
    if source == "bottom_up":
        inputs["weights"] = bottom_up_weights()
    return inputs


def bottom_up_weights():
    """The Faster R-CNN weights of source bottom_up: features.regions.bottom_up.weights_path (a
    local copy), else the download `weights` names, kept as {downloads_dir}/<key><suffix>."""
    settings = config["features"]["regions"].get("bottom_up") or {}
    if settings.get("weights_path"):
        return settings["weights_path"]
    key = settings.get("weights", "bottom_up_frcnn_weights")
    if DEMO:
        raise ValueError(
            "features.regions.source: bottom_up on the demo world needs "
            "features.regions.bottom_up.weights_path (the demo world downloads nothing)"
        )
    return downloaded_file(key)


def downloaded_file(key):
    """Where a plain-file download (model weights) lands: {downloads_dir}/<key><url suffix>."""
    return f"{DOWNLOADS}/{download_name(key, download_spec(key))}"


#: Region extraction on the GPU (the bottom-up detector) has resources of its own.
REGION_RESOURCES = (
    "bottom_up_features"
    if REGION_SOURCE == "bottom_up" and "bottom_up_features" in config["resources"]
    else "region_features"
)


def raw_root(wildcards, input):
    """data.root, found from the Karpathy JSON input (root/karpathy/dataset_coco.json)."""
    return os.path.dirname(os.path.dirname(input.karpathy))


# ------------------------------------------------------------------ checks before the first job
def check_downloads_up_front():
    """Every planned download and extraction must have a pin, and every planned download a
    source that answers: one message names them all (mia.data.preflight), before any job."""
    if DEMO:
        return
    from mia.data.preflight import PreflightError, check_planned_jobs

    try:
        check_planned_jobs(workflow.dag.needrun_jobs(), config["downloads"], USER_PINS, DOWNLOADS)
    except PreflightError as err:
        raise SystemExit(f"mia: {err}")


def check_java_up_front():
    """Caption evaluation runs Java (PTB tokenizer, METEOR): without it a local run stops before
    its first job, naming what to install, not after hours of training at the first
    evaluate_captions job. With --sdm conda the evaluation environment brings Java; on a cluster
    the nodes may have it where the login node has not: a warning only."""
    from snakemake.settings.types import DeploymentMethod

    from mia.evaluation.java import JAVA_HINT, java_path

    if not selected_runs("captioning") or java_path() is not None:
        return
    if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
        return
    if workflow.non_local_exec:
        print(f"WARNING: {JAVA_HINT} (the evaluate_captions jobs need it)", file=sys.stderr)
        return
    raise SystemExit(f"mia: caption evaluation is planned (the captioning tables). {JAVA_HINT}")
