"""The workflow's configuration: the schema names bad keys, and config.yaml plans the whole paper.

`snakemake -n` runs in a temporary --directory, so planning touches nothing in the checkout and
downloads nothing; the planned jobs must include every run of Tables 1-4 and section 3.3.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mia.config import ConfigError, load_config, merge, validate_config

SNAKEMAKE = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")

# Every run of the paper (Tables 1-4, section 3.3, Figure 4), written out independently of
# config.yaml. Figure 4's N = 2 is the `mia` run itself (MIA's default N), not a second training.
VA, CA = "captioning/visual_attention", "captioning/concept_attention"
PAPER_RUNS = (
    [f"captioning/{b}/{v}" for b in ("visual_attention", "concept_attention", "visual_condition",
                                     "concept_condition", "visual_regional_attention",
                                     "updown", "transformer") for v in ("base", "mia")]
    + [f"vqa/{b}/{v}" for b in ("updown", "ban") for v in ("base", "mia")]
    + [f"{VA}/mia_visual", f"{CA}/mia_concepts", f"{VA}/self_attention", f"{CA}/self_attention"]
    + [f"{m}/mia_n{n}" for m in (VA, CA) for n in (1, 3, 4, 5)]
)


def snakemake(repo_root: Path, workdir: Path, *args: str, timeout: int = 120
              ) -> subprocess.CompletedProcess:
    cmd = [SNAKEMAKE, "-s", str(repo_root / "Snakefile"), "--directory", str(workdir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def paper_config(repo_root: Path) -> dict:
    return load_config([repo_root / "config.yaml"])


# ------------------------------------------------------------------ schema (Python side)
@pytest.mark.parametrize(("key_path", "value", "expected"), [
    (("captioning", "train", "lr"), -1.0, "captioning.train.lr"),
    (("captioning", "decode", "beam_size"), 0, "captioning.decode.beam_size"),
    (("features", "grid", "backbone"), "vgg16", "features.grid.backbone"),
    (("downloads", "karpathy_split", "sha256"), "not-a-digest", "downloads.karpathy_split.sha256"),
    (("resources", "train_captioner", "mem_mb"), "lots", "resources.train_captioner.mem_mb"),
    (("data", "source"), "internet", "data.source"),
])
def test_bad_value_error_names_the_key(paper_config: dict, key_path: tuple, value: object,
                                       expected: str) -> None:
    config = copy.deepcopy(paper_config)
    node = config
    for key in key_path[:-1]:
        node = node[key]
    node[key_path[-1]] = value
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    assert err.value.key == expected
    assert expected in str(err.value)


def test_unknown_key_error_names_it(paper_config: dict) -> None:
    config = copy.deepcopy(paper_config)
    config["features"]["grid"]["bakcbone"] = "resnet152"  # a typo must not pass silently
    with pytest.raises(ConfigError, match=r"features\.grid\.bakcbone"):
        validate_config(config)


def test_bad_run_id_is_refused(paper_config: dict) -> None:
    config = copy.deepcopy(paper_config)
    config["tables"]["table1"]["runs"].append("captioning/visual_attention/../../etc")
    with pytest.raises(ConfigError, match=r"tables\.table1\.runs\.10"):
        validate_config(config)


def test_every_download_is_pinned_or_explicitly_null(paper_config: dict) -> None:
    """The schema requires the sha256 key; a value is a 64-hex digest or an explicit null."""
    config = copy.deepcopy(paper_config)
    del config["downloads"]["glove_6b"]["sha256"]
    with pytest.raises(ConfigError, match=r"downloads\.glove_6b"):
        validate_config(config)
    for key, spec in paper_config["downloads"].items():
        assert spec["sha256"] is None or re.fullmatch(r"(sha256:)?[0-9a-f]{64}|md5:[0-9a-f]{32}",
                                                      spec["sha256"]), key


def test_overrides_merge_like_snakemake(repo_root: Path) -> None:
    demo = load_config([repo_root / "config.yaml", repo_root / "config" / "demo.yaml"])
    assert demo["name"] == "demo" and demo["data"]["source"] == "demo"
    assert demo["captioning"]["train"]["epochs"] == 6  # replaced
    assert demo["captioning"]["train"]["label_smoothing"] == 0.1  # untouched keys stay
    assert demo["seeds"]["runs"]["captioning/visual_attention/base"] == [123, 124, 125]
    assert merge({"a": {"b": 1, "c": [1]}}, {"a": {"c": [2]}}) == {"a": {"b": 1, "c": [2]}}
    test = load_config([repo_root / "config.yaml", repo_root / "config" / "demo.yaml",
                        repo_root / "config" / "test.yaml"])  # the test config overlays the demo
    assert test["name"] == "test" and test["data"]["source"] == "demo"
    assert test["captioning"]["train"]["epochs"] == 2
    assert test["captioning"]["model"]["d_model"] == 64  # from the demo
    assert test["tables"]["figure4_iterations"]["runs"][1] == f"{VA}/mia"
    assert test["tables"]["table1"] == demo["tables"]["table1"]


def test_config_tables_hold_every_paper_run(paper_config: dict) -> None:
    runs = {r for t in paper_config["report"]["tables"] for r in paper_config["tables"][t]["runs"]}
    assert runs == set(PAPER_RUNS)


# ------------------------------------------------------------------ Snakemake itself
def test_snakemake_validation_names_the_key(repo_root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"captioning": {"train": {"lr": -1}}}))
    out = snakemake(repo_root, tmp_path, "-n", "--configfile", str(repo_root / "config.yaml"),
                    str(bad))
    assert out.returncode != 0
    # mia.config.check_config's one line (was Snakemake's schema dump, instance['captioning']...)
    assert f"{bad}:3: captioning.train.lr: " in out.stdout + out.stderr


def test_dry_run_plans_every_paper_run_without_downloading(repo_root: Path, tmp_path: Path
                                                          ) -> None:
    out = snakemake(repo_root, tmp_path, "-n", "--configfile", str(repo_root / "config.yaml"))
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    outputs = set(re.findall(r"^\s*output: (.*)$", text, flags=re.M))
    outputs = {p.strip() for line in outputs for p in line.split(",")}
    for run in PAPER_RUNS:  # one seed each in the paper config (seeds.default: [123])
        split = "test" if run.startswith("captioning") else "val"
        assert f"results/paper/runs/{run}/s123/metrics_{split}.json" in outputs, run
    for run in ("updown", "transformer"):  # Table 2: XE then SCST
        for variant in ("base", "mia"):
            assert f"results/paper/runs/captioning/{run}/{variant}/s123/scst/model.pt" in outputs
    for run in ("updown", "ban"):  # Table 3's evaluation-server uploads
        for variant in ("base", "mia"):
            for split in ("test-dev", "test-std"):
                assert f"results/paper/runs/vqa/{run}/{variant}/s123/server_{split}.json" in outputs
    assert "results/paper/figures/figure5" in outputs
    total = int(re.search(r"^total\s+(\d+)$", text, flags=re.M).group(1))
    print(f"snakemake -n on config.yaml: {total} jobs")
    assert total >= 3 * len(PAPER_RUNS) + 4  # train, decode/answer, evaluate per run; 4 SCST
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".snakemake") == []


@pytest.mark.parametrize("overrides", [(), ("config/demo.yaml",),
                                       ("config/demo.yaml", "config/test.yaml")])
def test_lint_is_clean(repo_root: Path, tmp_path: Path, overrides: tuple[str, ...]) -> None:
    configs = [str(repo_root / "config.yaml")] + [str(repo_root / o) for o in overrides]
    out = snakemake(repo_root, tmp_path, "--lint", "--configfile", *configs)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Lints for" not in out.stdout + out.stderr


# ------------------------------------------------------------------ unreadable config files
@pytest.mark.parametrize(("text", "expected"), [
    ("name: x\ndata: {source: demo\n  root: [\n", r"bad\.yaml:3:7: .*not valid YAML"),
    ("", r"bad\.yaml: .*the file is empty"),
    ("- a\n- b\n", r"bad\.yaml: .*expected a mapping at the top level, got list"),
    ("name: caf\xe9\n".encode("latin-1"), r"bad\.yaml: .*not UTF-8 text \(byte 9\)"),
])
def test_unreadable_config_names_file_and_line(tmp_path: Path, text: str | bytes,
                                               expected: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match=expected):
        load_config([bad])


def test_snakefile_names_the_line_of_a_broken_config_yaml(repo_root: Path, tmp_path: Path
                                                         ) -> None:
    # Snakemake's own loader would only say "Config file is not valid JSON or YAML".
    (tmp_path / "config.yaml").write_text("name: paper\ncaptioning:\n  train: {lr: 1e-3\n")
    out = snakemake(repo_root, tmp_path, "-n")
    assert out.returncode != 0
    assert re.search(r"config\.yaml:4:1: .*not valid YAML", out.stdout + out.stderr), \
        (out.stdout + out.stderr)[-2000:]


# ------------------------------------------------------------------ one definition of the variants
def test_variants_are_defined_once(repo_root: Path) -> None:
    from mia.captioning.config import CaptionerConfig
    from mia.variants import VARIANT_PATTERN, VARIANTS

    schema = yaml.safe_load((repo_root / "schemas" / "config.schema.yaml").read_text())
    assert schema["$defs"]["run_id"]["pattern"] == (
        f"^(captioning|vqa)/[a-z][a-z0-9_]*/({VARIANT_PATTERN})$")
    assert f"variant={'VARIANT_PATTERN'}" in (repo_root / "rules" / "common.smk").read_text()
    for variant in VARIANTS:
        assert re.fullmatch(VARIANT_PATTERN, variant)
        CaptionerConfig(variant=variant)
    for bad in ("mia_n0", "mia_n10", "mia_n", "MIA"):
        assert not re.fullmatch(VARIANT_PATTERN, bad)
        with pytest.raises(ValueError, match="unknown variant"):
            CaptionerConfig(variant=bad)
