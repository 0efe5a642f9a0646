"""Write config/README.md from the schema's descriptions (``make config-docs``).

    python scripts/render_config_docs.py [--check]

``--check`` writes nothing and exits 1 when the README is stale or a key has no description.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from mia.config_docs import render_file, undescribed_keys  # noqa: E402

SCHEMA = REPO / "schemas" / "config.schema.yaml"
CONFIG = REPO / "config.yaml"
README = REPO / "config" / "README.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="only check: exit 1 when the README is stale or a key undescribed")
    args = parser.parse_args(argv)
    missing = undescribed_keys(yaml.safe_load(SCHEMA.read_text()))
    if missing:
        print(f"{SCHEMA}: {len(missing)} key(s) without a description: {missing}",
              file=sys.stderr)
        return 1
    text = render_file(SCHEMA, CONFIG)
    if args.check:
        if not README.exists() or README.read_text() != text:
            print(f"{README} is stale: run `make config-docs`", file=sys.stderr)
            return 1
        return 0
    README.write_text(text)
    print(f"wrote {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
