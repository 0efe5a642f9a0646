"""Rules download_archive and download_file: fetch one ``downloads.<key>`` entry (an archive, or
a plain file such as model weights) and verify its pinned SHA-256.

A reproduction must verify its inputs, so an entry whose ``sha256`` is still null is refused
here (at run time, so ``snakemake -n`` still shows the whole paper) with the key to fill in.
"""

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

from mia.data.download import DownloadSpec, download  # noqa: E402

key = smk.wildcards.dataset
if not smk.params.sha256:
    raise SystemExit(
        f"config.yaml: downloads.{key}.sha256 is null; refusing to download {smk.params.url} "
        f"unverified. Pin it: download the file once from a trusted source, run "
        f"`sha256sum FILE`, and set downloads.{key}.sha256 to that hex digest.")
download(DownloadSpec(url=smk.params.url, sha256=smk.params.sha256), smk.output[0])
log.info("downloaded %s -> %s (sha256 verified)", smk.params.url, smk.output[0])
