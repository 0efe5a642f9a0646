"""Image captioning: the paper's baselines with and without MIA, decoding, and XE training.

Modules: ``config`` (dataclasses built from the YAML), ``encoder`` (features + concepts -> memory,
per variant), ``decoder`` (attention LSTM), ``models`` (registry: ``build_captioner``), ``beam``
(greedy and batched beam search), ``train`` (``train_captioner``, exact resume, ``Preempted``),
``decode`` (``decode_split`` -> COCO results JSON), ``checkpoint`` (atomic files, RNG state).
Import the submodules directly; this package file stays empty so importing one model does not
pull in the training stack.
"""
