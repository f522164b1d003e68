"""Batch scoring: a large table through a registered ONNX model with Ray Data, for any problem."""

from mlsd.scoring.batch import BatchScoringParams, OnnxBatchScorer, score_dataset, score_in_process

__all__ = ["BatchScoringParams", "OnnxBatchScorer", "score_dataset", "score_in_process"]
