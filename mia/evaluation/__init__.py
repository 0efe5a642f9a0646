"""Evaluation: coco-caption metrics (pycocoevalcap), a fast CIDEr-D, the official VQA accuracy.

* :mod:`mia.evaluation.captions`: ``evaluate_captions`` (PTB tokenizer, BLEU, METEOR, ROUGE-L,
  CIDEr-D, SPICE), what the paper's caption tables report;
* :mod:`mia.evaluation.cider`: ``CiderD``, equal to pycocoevalcap's CIDEr-D and much faster, for
  validation and SCST rewards;
* :mod:`mia.evaluation.vqa`: ``evaluate_vqa`` (the VQA API's accuracy) and the test-server file.
"""

from mia.evaluation.captions import CAPTION_METRICS, CaptionEvalConfig, evaluate_captions
from mia.evaluation.cider import CiderD, CiderDConfig, DocumentFrequency
from mia.evaluation.vqa import evaluate_vqa, question_accuracy, write_test_server_results

__all__ = [
    "CAPTION_METRICS",
    "CaptionEvalConfig",
    "CiderD",
    "CiderDConfig",
    "DocumentFrequency",
    "evaluate_captions",
    "evaluate_vqa",
    "question_accuracy",
    "write_test_server_results",
]
