"""Rules extract_<key>: verify one archive against its pin, then unpack it into the raw data
layout (no path escapes). A zip put into the downloads folder by hand is never extracted
unverified; a verification stamp spares hashing the same unchanged 13 GB zip twice."""

from pathlib import Path

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

from mia.data.download import DownloadError, safe_extract  # noqa: E402
from mia.data.pins import effective_pin, read_lock, verify_file  # noqa: E402

key, archive = smk.params.key, Path(smk.input[0])
pin = effective_pin(key, smk.config["downloads"][key], read_lock(archive.parent))
if pin is None:
    raise SystemExit(
        f"{archive}: downloads.{key} has no pinned checksum, so this archive cannot be verified "
        f"and is not extracted. If you trust it, record its digest with `mia data register "
        f"{key} {archive} --trust` (a local lock file, not config.yaml), then run again.")
try:
    verify_file(archive, pin, f"downloads.{key}")
except (ValueError, DownloadError) as err:
    raise SystemExit(
        f"{err}.\nFix: this is not the pinned file. Delete {archive} and run again to download "
        f"it, or register the right copy with `mia data register {key} FILE`.") from None

# data.root = the first output minus the raw-layout path the config says it provides
first, provided = Path(smk.output[0]), Path(smk.params.provides[0].rstrip("/"))
root = Path(*first.parts[:len(first.parts) - len(provided.parts)])
dest = root / smk.params.extract_to
dest.mkdir(parents=True, exist_ok=True)
safe_extract(archive, dest, members=smk.params.members)
missing = [p for p in smk.output if not Path(p).exists()]
if missing:
    raise SystemExit(f"{archive}: extracted into {dest} but {missing} did not appear; "
                     f"check this download's `extract_to`/`provides` in config.yaml")
log.info("extracted %s into %s (%s)", archive, dest, pin.describe())
