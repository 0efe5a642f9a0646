"""The reproduction report: the paper's tables with our numbers beside the published ones.

``inputs`` is the layout of files the workflow hands over (runs x seeds), ``results`` reads them
onto the paper's scale, ``paper`` loads the published numbers (``paper_results.yaml``),
``tables`` lines the two up, ``stats`` and ``gains`` give MIA's gain over each baseline a paired
bootstrap interval, ``figure4`` draws the iteration sweep, ``attention_maps`` and ``visualize``
make Figure 5 (also as ``mia visualize attention``, in ``cli``), ``figures`` draws training
curves, ``costs`` and ``benchmarks`` read what each job cost, ``environment`` lists software
versions, and ``render`` writes the jinja2 HTML page. Everything takes plain files, so the report
renders the same from Snakemake or from a test.
"""
