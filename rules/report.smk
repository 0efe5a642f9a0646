# The HTML report: the paper's tables with our numbers beside theirs, training curves, each
# run's wall time and peak memory, the config and the software versions.


localrules:
    render_report,


rule render_report:
    input:
        **report_inputs(),
    output:
        html=report(
            f"reports/{NAME}/index.html",
            caption="../report/report_html.rst",
            category="Report",
        ),
        figures=report(
            directory(f"reports/{NAME}/figures"),
            patterns=["{figure}.png"],
            category="Figures",
            caption="../report/figures.rst",
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
    script:
        "../workflow_scripts/render_report.py"
