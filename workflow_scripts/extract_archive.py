"""Rules extract_<key>: unpack one verified archive into the raw data layout (no path escapes)."""

from pathlib import Path

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

from mia.data.download import safe_extract  # noqa: E402

# data.root = the first output minus the raw-layout path the config says it provides
first, provided = Path(smk.output[0]), Path(smk.params.provides[0].rstrip("/"))
root = Path(*first.parts[:len(first.parts) - len(provided.parts)])
dest = root / smk.params.extract_to
dest.mkdir(parents=True, exist_ok=True)
safe_extract(smk.input[0], dest, members=smk.params.members)
missing = [p for p in smk.output if not Path(p).exists()]
if missing:
    raise SystemExit(f"{smk.input[0]}: extracted into {dest} but {missing} did not appear; "
                     f"check this download's `extract_to`/`provides` in config.yaml")
log.info("extracted %s into %s", smk.input[0], dest)
