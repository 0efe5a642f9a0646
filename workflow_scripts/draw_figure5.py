"""Rule draw_figure5: MIA's accumulated attention (VA w/ MIA, N = 1, 3, 5) on test images."""

from pathlib import Path

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

from mia.report.visualize import draw_figure5  # noqa: E402

pngs = draw_figure5(smk.params.run_dirs, smk.input.captions, Path(smk.output.figures),
                    images=smk.params.images)
log.info("Figure 5: %s", ", ".join(str(p) for p in pngs))
