"""Does the demo see? Quality tables of a finished demo run (not timings).

After ``make demo`` (or the test DAG: ``--name test``), prints:

1. the pre-trained demo backbone's held-out accuracy per label beside the majority class
   (``results/<name>/pretrain/backbone_metrics.json``);
2. the MIL concept detector's precision/recall@k of object words on the test images beside
   chance and the frequency ranking (``results/<name>/features/concept_quality.json``);
3. every captioning run's cross-entropy model on the test split: greedy and beam-3 CIDEr-D
   (the training code's fast CIDEr-D, :mod:`mia.evaluation.cider`, which the runs' val scores
   use) and the share of distinct captions (distinct captions / images: 2% when the features
   were blind), beside the official test CIDEr-D of the run's final model
   (``metrics_test.json``, coco-caption);
4. for runs with an SCST stage: val and test CIDEr-D (greedy) of the XE start, of the last SCST
   epoch's weights and of the selected ``scst/model.pt``, and the SCST history (val per epoch,
   mean sample CIDEr-D on the training batches);
5. for the same runs, the selected SCST weights' change over the XE start per split (train,
   val, test), paired over images, with a 95% bootstrap interval: on 100 val or test images a
   change of +-12 CIDEr-D is inside the noise, and val also chose the weights (biased upward).

Run: ``python benchmarks/demo_quality.py [--name demo] [--results results]`` from the
repository root (a minute on 2 cores: every model decodes the test split twice).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mia.captioning.decode import caption_split, load_captioner
from mia.config import load_config
from mia.data.loaders import CaptionData
from mia.evaluation.cider import CiderD
from mia.report.demo_features import BACKBONE_ROWS, distinct_fraction


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _stores(root: Path, config: dict, kind: str) -> tuple[Path, Path, Path]:
    grid = config["features"]["grid"]["backbone"]
    features = (root / "features" / f"grid_{grid}.h5" if kind == "grid" else
                root / "features" / f"regions_{config['features']['regions']['source']}.h5")
    return root / "data" / "captions.h5", features, root / "features" / f"concepts_{kind}.h5"


def _decode(model: torch.nn.Module, data: CaptionData, split: str, beam: int
            ) -> dict[int, str]:
    return caption_split(model, data, split, beam, 16, 100)


def paired_change(scorer: CiderD, before: dict[int, str], after: dict[int, str],
                  resamples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Mean per-image CIDEr-D of ``after`` minus ``before`` and its 95% bootstrap interval
    (images resampled with replacement, the same images for both)."""
    ids = sorted(before)
    _, a = scorer.score({i: before[i] for i in ids})
    _, b = scorer.score({i: after[i] for i in ids})
    diff = np.asarray([b[i] - a[i] for i in ids])
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (resamples, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="demo", help="config name: demo or test")
    parser.add_argument("--results", type=Path, default=Path("results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    extra = ["config/demo.yaml"] + (["config/test.yaml"] if args.name == "test" else [])
    config = load_config(["config.yaml", *extra])
    root = args.results / args.name

    backbone = _json(root / "pretrain" / "backbone_metrics.json")
    if backbone:
        print(f"\n## Demo backbone ({backbone['backbone']}): {backbone['held_out_images']} "
              f"held-out scenes, {backbone['held_out_objects']} objects; "
              f"{backbone['train_images']} training scenes, {backbone['epochs']} epochs, "
              f"{backbone['seconds']:.0f} s\n")
        print("| label | held-out accuracy % | majority class % |\n|---|---|---|")
        for key, label in BACKBONE_ROWS:
            print(f"| {label} | {100 * backbone[f'{key}_accuracy']:.1f} | "
                  f"{100 * backbone[f'{key}_chance']:.1f} |")
    quality = _json(root / "features" / "concept_quality.json")
    if quality:
        print(f"\n## Concept words: top {quality['k']} of {len(quality['object_words'])} object "
              f"words, {quality['images']} {quality['split']} images "
              f"({quality['mean_true_words']:.1f} true words each)\n")
        print("| ranking | precision % | recall % |\n|---|---|---|")
        for name, key in (("MIL detector", ""), ("chance", "chance_"),
                          ("frequency", "frequency_")):
            print(f"| {name} | {100 * quality[f'{key}precision_at_k']:.1f} | "
                  f"{100 * quality[f'{key}recall_at_k']:.1f} |")

    data_cache: dict[str, CaptionData] = {}
    rows, scst_rows = [], []
    for run_path in sorted((root / "runs" / "captioning").glob("*/*/s*")):
        xe = run_path / "xe" / "model.pt"
        if not xe.is_file():
            continue
        baseline = run_path.parent.parent.name
        kind = config["captioning"]["baselines"][baseline]["features"]
        if kind not in data_cache:
            data_cache[kind] = CaptionData.from_stores(*_stores(root, config, kind))
        data = data_cache[kind]
        scorers = {s: CiderD(data.references(s)) for s in ("val", "test")}
        model, _ = load_captioner(xe, "cpu")
        if getattr(model, "cnn", None) is not None:
            print(f"(skipped {run_path}: it fine-tuned its CNN and captions from the images)")
            continue
        greedy = _decode(model, data, "test", 1)
        beam = _decode(model, data, "test", 3)
        official = _json(run_path / "metrics_test.json")
        rows.append((f"{baseline}/{run_path.parent.name}", run_path.name,
                     float(scorers["test"].score(greedy)[0]), distinct_fraction(greedy.values()),
                     float(scorers["test"].score(beam)[0]), distinct_fraction(beam.values()),
                     None if official is None else official["CIDEr"]))
        scst = run_path / "scst"
        if (scst / "model.pt").is_file():
            history = _json(scst / "history.json") or []
            out = {"run": f"{baseline}/{run_path.parent.name}/{run_path.name}",
                   "history": [(h["epoch"], h["val_cider"], h.get("train_sample_cider"))
                               for h in history]}
            scorers["train"] = CiderD(data.references("train"))
            captions = {}
            for name, path in (("xe", xe), ("scst_selected", scst / "model.pt"),
                               ("scst_last", scst / "checkpoints" / "last.pt")):
                if not path.is_file():
                    continue
                if name == "scst_last":  # the last epoch's weights, selected or not
                    state = torch.load(path, map_location="cpu", weights_only=True)
                    model.load_state_dict(state["model"])
                else:
                    model, _ = load_captioner(path, "cpu")
                splits = ("train", "val", "test") if name != "scst_last" else ("val", "test")
                captions[name] = {s: _decode(model, data, s, 1) for s in splits}
                out[name] = {s: float(scorers[s].score(captions[name][s])[0])
                             for s in ("val", "test")}
            if "xe" in captions and "scst_selected" in captions:
                out["change"] = {s: paired_change(scorers[s], captions["xe"][s],
                                                  captions["scst_selected"][s])
                                 for s in ("train", "val", "test")}
            scst_rows.append(out)

    print("\n## XE captioners on the test split (CIDEr-D x100; distinct = distinct captions / "
          "images)\n")
    print("| run | seed | greedy CIDEr-D | greedy distinct % | beam-3 CIDEr-D | beam-3 distinct % "
          "| official test CIDEr-D of the final model |\n|---|---|---|---|---|---|---|")
    for run, seed, g, gd, b, bd, off in rows:
        official = "" if off is None else f"{100 * off:.1f}"
        print(f"| {run} | {seed} | {100 * g:.1f} | {100 * gd:.0f} | {100 * b:.1f} | "
              f"{100 * bd:.0f} | {official} |")
    if scst_rows:
        print("\n## SCST against its XE start (greedy CIDEr-D x100)\n")
        print("| run | XE val | XE test | SCST last val | SCST last test | selected val | "
              "selected test | history (epoch, val, sample CIDEr-D) |\n|---|---|---|---|---|---|"
              "---|---|")
        for r in scst_rows:
            def cell(name: str, split: str, r: dict = r) -> str:
                return f"{100 * r[name][split]:.1f}" if name in r else "n/a"
            history = "; ".join(f"{e}: {100 * v:.1f}" + (f" / {100 * s:.1f}" if s else "")
                                for e, v, s in r["history"])
            print(f"| {r['run']} | {cell('xe', 'val')} | {cell('xe', 'test')} | "
                  f"{cell('scst_last', 'val')} | {cell('scst_last', 'test')} | "
                  f"{cell('scst_selected', 'val')} | {cell('scst_selected', 'test')} | "
                  f"{history} |")
        print("\n## SCST's change over its XE start, paired over images (selected weights, "
              "greedy CIDEr-D x100, 95% bootstrap interval)\n")
        print("| run | train (500 images) | val (selects the weights) | test |\n|---|---|---|---|")
        for r in scst_rows:
            if "change" not in r:
                continue
            cells = [f"{100 * m:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
                     for m, lo, hi in (r["change"][s] for s in ("train", "val", "test"))]
            print(f"| {r['run']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
