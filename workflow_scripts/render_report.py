"""Rule render_report: the HTML report from the runs' metrics, histories and benchmarks."""

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

from mia.report.render import render_report  # noqa: E402

out = render_report(smk.params.config, smk.params.tables, smk.params.run_files,
                    smk.output.html, smk.output.figures)
log.info("report: %s", out)
