"""The reproduction report: the paper's tables with our numbers beside the published ones.

``paper`` loads the published numbers (``paper_results.yaml``), ``tables`` lines them up with our
metrics, ``figures`` draws training curves, ``benchmarks`` reads Snakemake benchmark files,
``environment`` lists software versions, and ``render`` writes the jinja2 HTML page. Everything
takes plain files, so the report renders the same from Snakemake or from a test.
"""
