"""Evaluators: measure a compressed model (or, for size, its plan). See `_base.Evaluator` for the contract."""

from autocompress.evaluators._base import EVALUATORS, TASK_EVALUATOR, Evaluator, build_evaluator
from autocompress.evaluators.accuracy import AccuracyEvaluator, resolve_labels
from autocompress.evaluators.fidelity import FidelityEvaluator, embed, mean_pool
from autocompress.evaluators.generation import DEFAULT_PROMPTS, generate_samples
from autocompress.evaluators.next_token import NextTokenEvaluator
from autocompress.evaluators.perplexity import PerplexityEvaluator, mean_nll
from autocompress.evaluators.size import SizeEvaluator, SizeReport, matrix_bytes, plan_size, pruned_shapes

__all__ = [
    "DEFAULT_PROMPTS", "EVALUATORS", "TASK_EVALUATOR", "AccuracyEvaluator", "Evaluator", "FidelityEvaluator",
    "NextTokenEvaluator", "PerplexityEvaluator", "SizeEvaluator", "SizeReport", "build_evaluator", "embed",
    "generate_samples", "matrix_bytes", "mean_nll", "mean_pool", "plan_size", "pruned_shapes", "resolve_labels",
]
