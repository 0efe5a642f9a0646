"""Rules download_archive and download_file: fetch one ``downloads.<key>`` entry (an archive,
or a plain file such as model weights), verified against its one pin.

The sources are tried in order (``urls``: the publisher's, then mirrors); the log names the one
that served. A copy the user registered (``mia data register``) is linked back instead of
downloaded. A failure ends with one line saying what failed and what to do, no traceback.
"""

from pathlib import Path

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

from mia.data.download import DownloadError  # noqa: E402
from mia.data.download import download as fetch  # noqa: E402
from mia.data.pins import effective_pin, read_lock, record_verified, spec_for  # noqa: E402
from mia.data.register import restore_registered  # noqa: E402

key = smk.wildcards.dataset
spec = smk.config["downloads"][key]
archive = Path(smk.output[0])
lock = read_lock(archive.parent)
pin = effective_pin(key, spec, lock)
if pin is None:
    raise SystemExit(
        f"config.yaml: downloads.{key} has no pinned checksum (sha256 is null); refusing to "
        f"download {spec['urls'][0]} unverified. If a copy you trust exists, run "
        f"`mia data register {key} FILE --trust` (recorded in {archive.parent}/local.lock.yaml, "
        f"not in config.yaml).")
try:
    if not restore_registered(key, archive, lock, pin):
        download = spec_for(list(spec["urls"]), pin)
        fetch(download, archive)  # progress: lines in the log, a bar only on a terminal
        record_verified(archive, pin, snakemake_output=True)  # touched and protected next
except (DownloadError, ValueError, OSError) as err:
    raise SystemExit(
        f"downloads.{key}: {err}\nFix: check the network and run again (a partial file is "
        f"resumed), or put a copy you have in place with `mia data register {key} FILE`.") from None
log.info("downloads.%s -> %s (%s)", key, archive, pin.describe())
