"""Rule render_report: the HTML report from the runs' metrics, histories and benchmarks."""

from pathlib import Path

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

from mia.report.render import render_report  # noqa: E402

figure5 = None
if hasattr(smk.input, "figure5"):
    figure5 = {"N = 1, 3, 5": sorted(Path(smk.input.figure5).glob("*.png"))}
out = render_report(smk.params.config, smk.params.tables, smk.params.run_files, smk.output.html,
                    smk.output.figures, figure5=figure5, server_files=smk.params.server_files,
                    vqa_annotations=getattr(smk.input, "vqa_annotations", None),
                    tables_dir=smk.output.tables, paper_figures_dir=smk.output.paper_figures,
                    data_inputs=smk.params.get("data_inputs"),
                    benchmarks_dir=smk.params.benchmarks_dir)
log.info("report: %s", out)
