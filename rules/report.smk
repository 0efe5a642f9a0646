# The HTML report: the paper's tables with our numbers beside theirs (mean +- sd over seeds), the
# MIA gains with bootstrap intervals, Figure 4 (metrics vs N), Figure 5 (MIA's accumulated
# attention), training curves, each run's cost, the config and the software versions.


localrules:
    render_report,


rule draw_figure5:
    input:
        models=lambda wc: figure5_models(),
        runs=lambda wc: [f"{d}/run.json" for d in figure5_run_dirs()],
        captions=CAPTIONS_STORE,
    output:
        figures=directory(f"{R}/figures/figure5"),
    log:
        f"{R}/logs/draw_figure5.log",
    benchmark:
        f"{R}/benchmarks/draw_figure5.tsv"
    conda:
        CORE_ENV
    threads: res("report", "threads")
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    params:
        run_dirs=figure5_run_dirs(),
        images=config["report"].get("figure5_images", 2),
    script:
        "../workflow_scripts/draw_figure5.py"


rule render_report:
    input:
        unpack(report_inputs),
    output:
        html=report(
            f"reports/{NAME}/index.html",
            caption="../report/report_html.rst",
            category="Report",
        ),
        figures=report(
            directory(f"reports/{NAME}/figures"),
            patterns=["{figure}.png"],
            category="Training curves",
            caption="../report/figures.rst",
        ),
        tables=report(
            directory(f"reports/{NAME}/tables"),
            patterns=["{table}.html"],
            category="Tables",
            subcategory="{table}",
            labels={"table": "{table}"},
            caption="../report/tables.rst",
        ),
        paper_figures=report(
            directory(f"reports/{NAME}/paper_figures"),
            patterns=["{figure}/{name}.png"],
            category="Figures",
            subcategory="{figure}",
            caption="../report/paper_figures.rst",
        ),
    log:
        f"{R}/logs/render_report.log",
    benchmark:
        f"{R}/benchmarks/render_report.tsv"
    conda:
        CORE_ENV
    threads: res("report", "threads")
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    params:
        config=config,
        tables=selected_tables(),
        run_files=report_run_files(),
        server_files=server_score_files(),
        data_inputs=pinned_inputs(),
        benchmarks_dir=f"{R}/benchmarks",  # every rule's costs (the jobs upstream are done)
    script:
        "../workflow_scripts/render_report.py"
