"""`mia config check` catches what the run would: one validation (mia.config.check_config) for the
command, the Snakefile and the dataclasses, each error naming the file, the line and the key.

Every overlay below used to pass `mia config check` (and `make demo` runs the check first) and
fail later, in a train job or silently: NaN and infinite numbers, heads that do not divide a
width, `mean_of_others` with one sample, a table naming an unknown baseline, an unknown table in
`report.tables` ("2 tables selected"), local VQA runs that train on val, and a key written twice
(YAML keeps the second block silently).
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mia.captioning.config import CaptionerConfig
from mia.captioning.scst import SCSTConfig
from mia.cli import main as mia_main
from mia.config import ConfigError, load_config, locate, read_config
from mia.vqa.train import VQATrainConfig

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")

TRANSFORMER_3_HEADS = """\
captioning:
  baselines:
    transformer:
      features: regions
      stages: [xe, scst]
      model:
        d_model: 64
        embed_dim: 64
        options: {heads: 3}
"""
UNKNOWN_BASELINE = """\
tables:
  table1:
    title: Table 1
    task: captioning
    metrics: [CIDEr]
    runs:
      - captioning/visual_attention/base
      - captioning/nosuch/base
"""

# (overlay over config.yaml, its line, the key, the message)
CASES = {
    "scst_lr_nan": ("captioning:\n  scst:\n    lr: .nan\n", 3, "captioning.scst.lr",
                    r"nan is not a finite number"),
    "vqa_lr_nan": ("vqa:\n  train:\n    lr: .nan\n", 3, "vqa.train.lr",
                   r"nan is not a finite number"),
    "scst_temperature_inf": ("captioning:\n  scst:\n    temperature: .inf\n", 3,
                             "captioning.scst.temperature", r"inf is not a finite number"),
    "transformer_heads": (TRANSFORMER_3_HEADS, 9,
                          "captioning.baselines.transformer.model.options.heads",
                          r"the Transformer's captioner\.d_model=64 must be even and divisible by "
                          r"options\.heads=3 \(run captioning/transformer/base\)"),
    "captioning_mia_heads": ("captioning:\n  model:\n    mia_heads: 3\n", 3,
                             "captioning.model.mia_heads",
                             r"MIA's 3 heads must divide its width captioner\.d_model=512 "
                             r"\(run captioning/visual_attention/mia\)"),
    "captioning_mia_width": ("captioning:\n  model:\n    d_model: 500\n", 3,
                             "captioning.model.d_model",
                             r"MIA's 8 heads must divide its width captioner\.d_model=500"),
    "vqa_mia_heads": ("vqa:\n  model:\n    mia_heads: 3\n", 3, "vqa.model.mia_heads",
                      r"MIA's 3 heads must divide its width vqa\.model\.mia_d_model=512 "
                      r"\(run vqa/updown/mia\)"),
    "mean_of_others_one_sample": (
        "captioning:\n  scst:\n    baseline: mean_of_others\n    samples_per_image: 1\n", 4,
        "captioning.scst.samples_per_image", r"'mean_of_others' needs samples_per_image >= 2"),
    "table_unknown_baseline": (UNKNOWN_BASELINE, 8, "tables.table1.runs.1",
                               r"names baseline 'nosuch', which is not under "
                               r"captioning\.baselines \(defined: concept_attention, "),
    "report_unknown_table": ("report:\n  tables: [table1, table9]\n", 2, "report.tables.1",
                             r"'table9' is not defined under tables \(defined: "),
    "vqa_local_runs_train_on_val": (
        "vqa:\n  train:\n    train_splits: [train, val]\n", 3, "vqa.train.train_splits",
        r"the local runs \(run vqa/updown/base\) are scored on val, so they must not train on "
        r"it; .* only under vqa\.server\.train"),
    "top_level_key_twice": ("name: x\ncaptioning:\n  train: {lr: 1.0e-3}\nname: y\n", 4, "name",
                            r"written twice \(lines 1 and 4\); YAML would silently keep only the "
                            r"second block"),
    "nested_key_twice": ("captioning:\n  train:\n    lr: 1.0e-3\n    epochs: 3\n    lr: 2.0e-3\n",
                         5, "captioning.train.lr", r"written twice \(lines 3 and 5\)"),
    "stages_not_a_choice": (
        "captioning:\n  baselines:\n    updown:\n      features: regions\n      stages: [scst]\n",
        5, "captioning.baselines.updown.stages",
        r"\[scst\] is not valid: expected \[xe\] or \[xe, scst\]$"),
    "unknown_key": ("captioning:\n  train:\n    lr_decay_strat: 3\n", 3,
                    "captioning.train.lr_decay_strat", r"'lr_decay_strat' was unexpected"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_check_refuses_what_the_run_would_naming_file_line_and_key(case: str, tmp_path: Path
                                                                   ) -> None:
    text, line, key, message = CASES[case]
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config([REPO / "config.yaml", overlay], full=True)
    assert err.value.key == key
    assert str(err.value).startswith(f"{overlay}:{line}: {key}: "), str(err.value)
    assert re.search(message, str(err.value)), str(err.value)


def test_mia_config_check_prints_one_plain_line(tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    assert mia_main(["config", "check", str(REPO / "config" / "demo.yaml")]) == 0
    out, err = capsys.readouterr()
    assert out == (f"{REPO / 'config.yaml'} + {REPO / 'config' / 'demo.yaml'}: valid (name "
                   "'demo'; 6 tables, 30 runs selected)\n")  # no timestamp, no INFO
    overlay = tmp_path / "bad.yaml"
    overlay.write_text(CASES["report_unknown_table"][0])
    assert mia_main(["config", "check", str(overlay)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"mia: error: {overlay}:2: report.tables.1: 'table9' is not defined")


def test_the_snakefile_runs_the_same_check_and_prints_its_message(tmp_path: Path) -> None:
    """The same bad overlay given to Snakemake printed a 154-line schema dump (and these passed
    its schema validation altogether)."""
    overlay = tmp_path / "bad.yaml"
    overlay.write_text(CASES["vqa_local_runs_train_on_val"][0])
    out = subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
                          "-n", "--configfile", str(REPO / "config.yaml"), str(overlay)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    text = (out.stdout + out.stderr).strip()
    assert text.startswith(f"{overlay}:3: vqa.train.train_splits: ['train', 'val']: the local "
                           "runs"), text[-3000:]
    assert text.count("\n") < 3, text[-3000:]


@pytest.mark.parametrize("extra", [[], ["demo.yaml"], ["demo.yaml", "test.yaml"]])
def test_every_config_of_the_project_passes_the_full_check(extra: list[str]) -> None:
    load_config([REPO / "config.yaml", *(REPO / "config" / e for e in extra)], full=True)


def test_an_error_names_the_file_that_set_the_key_last(tmp_path: Path) -> None:
    base = read_config(REPO / "config.yaml")
    overlay = tmp_path / "o.yaml"
    overlay.write_text("tables:\n  table1:\n    runs: [captioning/updown/base]\n"
                       "captioning:\n  model: {d_model: 64}\n")
    over = read_config(overlay)
    line = next(i for i, t in enumerate((REPO / "config.yaml").read_text().splitlines(), 1)
                if t.startswith("name:"))
    assert locate("name", [base, over]) == f"{REPO / 'config.yaml'}:{line}"
    assert locate("captioning.model.d_model", [base, over]) == f"{overlay}:5"
    # The overlay's list replaced config.yaml's: item 5 of it exists in no file any more.
    assert locate("tables.table1.runs.5", [base, over]) == f"{overlay}:3"
    assert locate("captioning.model.embed_dim", [base, over]).startswith(str(REPO))
    assert locate("nowhere", [base, over]) is None


def test_the_dataclasses_refuse_the_same_values() -> None:
    """Built from a config (from_dict), the dataclasses refuse NaN and infinite numbers too,
    which passed their own `<= 0` checks; the heads check lives in the captioner's config."""
    with pytest.raises(ValueError, match=r"scst\.lr: must be a finite number, got nan"):
        SCSTConfig.from_dict({"lr": math.nan}, "scst")
    with pytest.raises(ValueError, match=r"vqa\.train\.betas: must be a finite number"):
        VQATrainConfig.from_dict({"betas": [0.9, math.inf]}, "vqa.train")
    with pytest.raises(ValueError, match=r"captioner\.mia_heads: MIA's 3 heads must divide"):
        CaptionerConfig(variant="mia", d_model=64, mia_heads=3)
    CaptionerConfig(variant="base", d_model=64, mia_heads=3)  # no MIA, no heads to divide
