"""``mia features grid|regions|concepts``: the feature extractors without Snakemake.

Each command takes the raw-data root (docs/CONTRACTS.md layout), an output store and any
config field as ``--set key=value`` (the fields of the component's config dataclass; values are
parsed as YAML, so ``--set pretrained=false --set batch_size=16`` work).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import yaml


def _overrides(pairs: list[str], cls: type) -> dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--set {pair!r}: expected key=value with key one of {sorted(fields)}")
        out[key] = yaml.safe_load(value)
    return out


def _grid(args: argparse.Namespace) -> int:
    from mia.features.grid import GridFeatureConfig, extract_grid_features_from_karpathy

    cfg = GridFeatureConfig(**_overrides(args.set, GridFeatureConfig))
    extract_grid_features_from_karpathy(args.root / "karpathy" / "dataset_coco.json", args.root,
                                        args.out, cfg)
    return 0


def _regions(args: argparse.Namespace) -> int:
    from mia.features.regions import RegionFeatureConfig, extract_region_features

    cfg = RegionFeatureConfig(**_overrides(args.set, RegionFeatureConfig))
    instances = sorted((args.root / "annotations").glob("instances_*2014.json"))
    extract_region_features(cfg, args.out, karpathy_json=args.root / "karpathy" /
                            "dataset_coco.json", root=args.root, instances=instances)
    return 0


def _tsv(args: argparse.Namespace) -> int:
    from mia.features.bottom_up.tsv import export_bottomup_tsv

    export_bottomup_tsv(args.store, args.out)
    return 0


def _concepts(args: argparse.Namespace) -> int:
    from mia.features.concepts import ConceptConfig, build_concept_store

    cfg = ConceptConfig(**_overrides(args.set, ConceptConfig))
    build_concept_store(args.root / "karpathy" / "dataset_coco.json", args.features, args.out,
                        cfg)
    return 0


def _fields(cls: type) -> str:
    """The ``--set`` keys of a config dataclass with their defaults, for the help."""
    out = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        out.append(f"{f.name}={default}")
    return ", ".join(out)


def _config_class(name: str) -> type:
    if name == "grid":
        from mia.features.grid import GridFeatureConfig
        return GridFeatureConfig
    if name == "regions":
        from mia.features.regions import RegionFeatureConfig
        return RegionFeatureConfig
    from mia.features.concepts import ConceptConfig
    return ConceptConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("features", help="grid, region and concept feature stores")
    commands = parser.add_subparsers(dest="features_command", metavar="STORE", required=True)
    for name, func, help_text in (
            ("grid", _grid, "ResNet grid features (grid_*.h5)"),
            ("regions", _regions, "36 region features (regions_*.h5)"),
            ("concepts", _concepts, "MIL concept words (concepts_*.h5)")):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.describe = lambda name=name, text=help_text: (  # type: ignore[attr-defined]
            f"{text}. Settings (--set KEY=VALUE) and their defaults on this machine: "
            f"{_fields(_config_class(name))}.")
        sub.add_argument("--root", type=Path, required=True, help="raw data root")
        sub.add_argument("--out", type=Path, required=True, help="output store (.h5)")
        if name == "concepts":
            sub.add_argument("--features", type=Path, required=True, help="grid_*.h5 store")
        sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="a setting of the description's list, e.g. batch_size=16 "
                              "(repeatable; values are YAML)")
        sub.set_defaults(func=func)
    tsv = commands.add_parser("tsv", help="a region store as a bottom-up TSV file (the "
                                          "trainval_36 format), to share an extraction")
    tsv.add_argument("--store", type=Path, required=True, help="regions_*.h5 store")
    tsv.add_argument("--out", type=Path, required=True, help="output .tsv")
    tsv.set_defaults(func=_tsv)
