"""Evaluation of bundles on the runtime side (numpy and onnxruntime, no torch): engagement and line
statistics from play logs (``metrics``), KL to a reference bundle and held-out perplexity
(``model_metrics``), and a side-by-side table and HTML report (``report``; matplotlib optional)."""

from __future__ import annotations

from npcrl.evaluation.metrics import (
    LogMetrics,
    bootstrap_ci,
    conversation_metrics,
    distinct_n,
    log_metrics,
    ngrams,
    repeated_share,
    repetition_flags,
    word_tokens,
)
from npcrl.evaluation.model_metrics import (
    check_same_vocabulary,
    heldout_persona_texts,
    line_kl,
    perplexity,
    text_nll,
    turn_kl,
)
from npcrl.evaluation.report import compare_table, rows_from_columns, write_report

__all__ = [
    "LogMetrics",
    "bootstrap_ci",
    "check_same_vocabulary",
    "compare_table",
    "conversation_metrics",
    "distinct_n",
    "heldout_persona_texts",
    "line_kl",
    "log_metrics",
    "ngrams",
    "perplexity",
    "repeated_share",
    "repetition_flags",
    "rows_from_columns",
    "text_nll",
    "turn_kl",
    "word_tokens",
    "write_report",
]
