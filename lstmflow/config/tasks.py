"""What each task accepts: its data kinds, losses, search metrics, promotion metrics and significance test.

Every per-task table lives here, so a new task is declared in one place.
"""

from __future__ import annotations

from typing import Literal

#: The way a metric improves.
Direction = Literal["minimize", "maximize"]

#: Which data kinds each task can learn from.
TASK_DATA_KINDS = {
    "forecast": ("timeseries",),
    "classify": ("sequences", "images", "text", "audio", "video"),
    "language_model": ("corpus",),
    "translate": ("pairs",),
    "transcribe": ("speech",),
}
#: The losses each task can train on; the first is its default.
TASK_LOSSES = {
    "forecast": ("mse", "mae", "huber"),
    "classify": ("cross_entropy",),
    "language_model": ("cross_entropy",),
    "translate": ("cross_entropy",),
    "transcribe": ("ctc",),
}
#: The tasks whose training samples the validation part can join for ``train.refit``: independent windows or
#: sequences (a language model's corpus is one stream, trained until its budget ends it).
REFIT_TASKS = ("classify", "forecast")
#: The data kinds whose models the run's strong baseline can be blended with (``train.blend_baseline``), and those
#: blended at ``auto``: the blend gained 1 to 8 points on every text set of the quality suite and 2 on its audio set;
#: a sequence classifier blended with MiniRocket's regression gained up to 18 points on the suite's UCR/UEA sets
#: and lost at most half of one; a forecast averaged with AutoETS beat the network alone on 11 of its 13 series; a
#: character model mixed with its Kneser-Ney n-gram beat both on the suite's corpus and the demo's. Video is not
#: measured.
BLENDED_KINDS = ("timeseries", "sequences", "text", "audio", "video", "corpus")
AUTO_BLENDED_KINDS = ("timeseries", "sequences", "text", "audio", "corpus")
#: The classifier kinds whose blend weight is chosen on the validation part, which then stays apart from training
#: however small; the others (sequences, audio: MiniRocket's regression) take equal weights.
VAL_WEIGHTED_KINDS = ("text", "video")
#: The per-epoch validation metrics each task logs, which a search can optimise, and the way each improves.
SEARCH_METRICS: dict[str, dict[str, Direction]] = {
    "forecast": {"val_loss": "minimize"},
    "classify": {"val_loss": "minimize", "val_accuracy": "maximize", "val_macro_f1": "maximize"},
    "language_model": {"val_loss": "minimize", "val_perplexity": "minimize"},
    "translate": {"val_loss": "minimize", "val_token_accuracy": "maximize"},
    "transcribe": {"val_loss": "minimize", "val_cer": "minimize"},
}
#: Per task: the test metrics a champion can be chosen by (each as evaluation logs it, without `test_`), and the way
#: each improves; the first is the default.
PROMOTE_METRICS: dict[str, dict[str, Direction]] = {
    "forecast": {"mae": "minimize", "rmse": "minimize", "smape": "minimize", "mase": "minimize"},
    "classify": {"accuracy": "maximize", "macro_f1": "maximize", "log_loss": "minimize"},
    "language_model": {"cross_entropy": "minimize", "perplexity": "minimize", "bits_per_character": "minimize"},
    "translate": {"chrf": "maximize", "bleu": "maximize"},
    "transcribe": {"cer": "minimize", "wer": "minimize"},
}
#: The significance test each task's gate uses under `test: auto`; the one test (besides `none`) that fits the task.
PROMOTE_TESTS = {
    "forecast": "diebold_mariano", "classify": "mcnemar", "language_model": "none", "translate": "sign",
    "transcribe": "sign",
}  # fmt: skip
