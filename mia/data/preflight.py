"""Before any job starts: can every planned download be verified, and is each one reachable?

A run that stops after hours because the twelfth download has no pin, or because the machine
has no route to the internet, wastes the hours and says it twelve times. The workflow calls
:func:`check_planned_downloads` once, when Snakemake has planned the jobs and before it starts
any, with the keys of the planned download and extraction jobs. It refuses with ONE message
naming every key without a pin (extraction verifies too, so a zip dropped in by hand counts) and
every download none of whose sources answers, each with the fix.

Reachability is asked with one ``GET`` of the first byte (``Range: bytes=0-0``) per source, in
parallel, with a short timeout: a dead host (HTTP 404, 403, "409 Public access is not
permitted") or no network at all shows in seconds. A source that announces another size than
the pinned one is counted unreachable too (it serves another file).
"""

from __future__ import annotations

import logging
import re
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mia.data.pins import USER_PIN_NOTE, effective_pin, lock_path

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 15.0


class PreflightError(RuntimeError):
    """Planned downloads that cannot run: the message names each one and the fix."""


def probe(url: str, size: int | None = None, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when ``url`` serves a file (of ``size`` bytes when given), else why not."""
    if url.startswith("file://"):
        path = Path(urllib.request.url2pathname(url[len("file://"):]))
        if not path.is_file():
            return "no such file"
        if size is not None and path.stat().st_size != size:
            return f"{path.stat().st_size} bytes, not the pinned {size}"
        return None
    request = urllib.request.Request(url, headers={"Range": "bytes=0-0",
                                                   "User-Agent": "mia-repro-download/1",
                                                   "Accept-Encoding": "identity"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            total = _total_size(response.status, response.headers)
    except urllib.error.HTTPError as err:
        if err.code == 416:  # an empty file: nothing to range over
            return None
        return f"HTTP {err.code} {err.reason}"
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return f"unreachable ({reason})"
    if size is not None and total is not None and total != size:
        return f"serves {total} bytes, not the pinned {size} (another file)"
    return None


def _total_size(status: int, headers: Any) -> int | None:
    if status == 206:
        match = re.fullmatch(r"bytes \d+-\d+/(\d+)", (headers.get("Content-Range") or "").strip())
        return int(match.group(1)) if match else None
    length = headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def check_planned_downloads(downloads_to_fetch: Iterable[str], archives_to_extract: Iterable[str],
                            downloads: Mapping[str, Mapping[str, Any]],
                            lock: Mapping[str, Mapping[str, Any]], downloads_dir: str,
                            check_network: bool = True) -> None:
    """Raise :class:`PreflightError` naming every planned key without a pin and every planned
    download that no source serves; return quietly when all is well."""
    fetch = sorted(set(downloads_to_fetch))
    needed = sorted(set(fetch) | set(archives_to_extract))
    unpinned = [k for k in needed if effective_pin(k, downloads[k], lock) is None]
    problems = []
    if unpinned:
        problems.append(_unpinned_message(unpinned, downloads_dir))
    reachable = [k for k in fetch if k not in unpinned]
    if check_network and reachable:
        dead = _unreachable(reachable, downloads, lock)
        if dead:
            problems.append(_unreachable_message(dead))
    if problems:
        raise PreflightError("\n\n".join(problems))
    if fetch:
        log.info("downloads to fetch: %s (each pinned and reachable)", ", ".join(fetch))


def check_planned_jobs(jobs: Iterable[Any], downloads: Mapping[str, Mapping[str, Any]],
                       lock: Mapping[str, Mapping[str, Any]], downloads_dir: str) -> None:
    """:func:`check_planned_downloads` over Snakemake's planned jobs (``workflow.dag``): the
    ``download_archive`` / ``download_file`` jobs (wildcard ``dataset``) and the
    ``extract_<key>`` jobs."""
    fetch, extract = [], []
    for job in jobs:
        name = job.rule.name
        if name in ("download_archive", "download_file"):
            fetch.append(job.wildcards.dataset)
        elif name.startswith("extract_") and name[len("extract_"):] in downloads:
            extract.append(name[len("extract_"):])
    check_planned_downloads(fetch, extract, downloads, lock, downloads_dir)


def _unreachable(keys: Sequence[str], downloads: Mapping[str, Mapping[str, Any]],
                 lock: Mapping[str, Mapping[str, Any]]) -> dict[str, list[tuple[str, str]]]:
    jobs = [(k, url, effective_pin(k, downloads[k], lock)) for k in keys
            for url in downloads[k]["urls"]]
    with ThreadPoolExecutor(max_workers=min(16, len(jobs))) as pool:
        answers = list(pool.map(lambda j: probe(j[1], j[2].size if j[2] else None), jobs))
    failures: dict[str, list[tuple[str, str]]] = {}
    served = set()
    for (key, url, _), answer in zip(jobs, answers, strict=True):
        if answer is None:
            served.add(key)
        else:
            failures.setdefault(key, []).append((url, answer))
    return {k: v for k, v in failures.items() if k not in served}


def _unpinned_message(keys: Sequence[str], downloads_dir: str) -> str:
    lines = [f"These inputs have no pinned checksum, so they cannot be verified: "
             f"{', '.join(keys)}. Nothing was started."]
    lines.append("Fix, for each: if its publisher gives a checksum, set downloads.KEY.sha256 "
                 "(or .md5) in config.yaml with a comment naming where it is published; "
                 "otherwise register a copy you trust: `mia data register KEY FILE --trust` "
                 f"records its own sha256 in {lock_path(downloads_dir)} (the report then marks "
                 f"it '{USER_PIN_NOTE}').")
    if any(k.startswith("bottom_up") for k in keys):
        lines.append("The bottom-up features have no published checksum and no working host: "
                     "with features.regions.source: auto the regions are computed from the "
                     "images instead (README, 'Region features').")
    return "\n".join(lines)


def _unreachable_message(dead: Mapping[str, list[tuple[str, str]]]) -> str:
    lines = [f"No source answers for {len(dead)} planned download(s); nothing was started:"]
    for key in sorted(dead):
        for url, why in dead[key]:
            lines.append(f"  {key}: {url}: {why}")
    lines.append("Fix: check this machine's network (a proxy? set https_proxy/http_proxy); "
                 "downloads run where snakemake runs (they are local rules), so on a cluster "
                 "start it on a node with internet. Or register copies you already have: "
                 "`mia data register KEY FILE` (checked against the same pins), then run again.")
    return "\n".join(lines)
