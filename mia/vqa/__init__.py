"""VQA models of Table 3: Up-Down and BAN (with the counting module), each with and without MIA.

``build_vqa_model(VQAModelConfig(baseline="ban", variant="mia"), n_question_words, n_answers,
n_concept_words)`` builds one; ``loss = model.loss(model(batch), batch["target"])`` trains it on
``mia.data.loaders.VQAData`` batches.

Training and answering live in their own modules (imported on demand, as they pull in the
training loop and the official metric): :mod:`mia.vqa.train` (``VQATrainConfig``,
``train_vqa``: the references' Adamax recipes, selection on the official val accuracy),
:mod:`mia.vqa.predict` (``answer_split``: the official results format) and
:mod:`mia.vqa.server` (``write_server_files``: the evaluation server's test-dev / test-std files).
"""

from mia.vqa.config import VQAModelConfig
from mia.vqa.counting import Counter
from mia.vqa.glove import read_glove
from mia.vqa.models import (
    MODELS,
    VQAModel,
    VQAOutput,
    build_vqa_model,
    soft_accuracy,
    vqa_loss,
)

__all__ = ["MODELS", "Counter", "VQAModel", "VQAModelConfig", "VQAOutput", "build_vqa_model",
           "read_glove", "soft_accuracy", "vqa_loss"]
