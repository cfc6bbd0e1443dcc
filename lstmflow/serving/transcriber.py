"""The served transcriber: audio clips in, what was said out; and the CTC decoding shared with evaluation.

A request names each clip by its ``path`` (inside the folders the model may read, as for audio classification) or
carries its bytes, base64-encoded, in ``audio_base64``; the features are the data stage's
(:func:`lstmflow.data.audio.clip_features`) scaled as in training. No MLflow needed: :mod:`lstmflow.tracking.serving`
wraps it as a pyfunc.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from lstmflow.serving.bundle import load_network
from lstmflow.serving.files import ROOTS_KEY, FileGate, clip_source, require_clip_columns
from lstmflow.serving.request_checks import decoded

if TYPE_CHECKING:
    from lstmflow.models.lstm import LSTMNet

#: Clips read by the network at once when transcribing.
TRANSCRIBE_BATCH = 32


@torch.no_grad()
def transcribe_frames(model: LSTMNet, alphabet: list[str], clips: list[torch.Tensor], beam_width: int) -> list[str]:
    """The transcripts of clips given as scaled (T, F) frames: greedy when ``beam_width`` is 1, else CTC prefix beam
    search; clips are read in batches of similar length."""
    from torch.nn.utils.rnn import pad_sequence

    from lstmflow.data.speech import decode_ids
    from lstmflow.models.ctc import output_ids, prefix_beam_search

    model.eval()
    order = sorted(range(len(clips)), key=lambda i: len(clips[i]))
    written = [""] * len(clips)
    for start in range(0, len(order), TRANSCRIBE_BATCH):
        rows = order[start : start + TRANSCRIBE_BATCH]
        lengths = torch.tensor([len(clips[i]) for i in rows])
        logits = model.logits(pad_sequence([clips[i] for i in rows], batch_first=True), lengths)  # (B, T, V)
        log_probs, frames = torch.log_softmax(logits.float(), dim=-1), model.output_lengths(lengths)
        if beam_width == 1:
            found = output_ids(log_probs, frames)
        else:
            found = [
                prefix_beam_search(log_probs[slot, : int(n)].numpy(), beam_width)[0] for slot, n in enumerate(frames)
            ]
        for slot, i in enumerate(rows):
            written[i] = decode_ids(alphabet, found[slot])
    return written


class Transcriber:
    """Clips in (``path`` or ``audio_base64`` per row), a ``text`` column out; beam search of
    ``evaluate.beam_width``."""

    def __init__(self, bundle_dir: Path, spec: Any, info: dict[str, Any]) -> None:
        from lstmflow.data.sequences import SequencePreprocessing

        self.spec = spec
        self.alphabet: list[str] = info["alphabet"]
        self.preprocessing = SequencePreprocessing.from_dict(info["preprocessing"])
        outputs = len(self.alphabet) + 1  # the characters and the CTC blank
        self.model = load_network(bundle_dir, spec, info["n_features"], outputs, per_step=True, generates=False)
        #: Where request paths may point: see :mod:`lstmflow.serving.files`.
        self.files = FileGate(info.get(ROOTS_KEY))

    def allow_files_under(self, *folders: Path | str) -> None:
        """Let requests name files under ``folders`` too (``lstmflow predict`` adds the current directory)."""
        self.files.allow(*folders)

    @staticmethod
    def bundle_info(features_dir: Path) -> dict[str, Any]:
        from lstmflow.data.speech import load_speech

        features = load_speech(features_dir)
        return {
            "alphabet": features.alphabet,
            "n_features": features.n_features,
            "preprocessing": features.preprocessing.to_dict(),
        }

    def example(self, info: dict[str, Any]) -> pd.DataFrame:
        """The data's first clip by its path and its second by its bytes: both columns optional in the served
        signature, so a request may use either, row by row."""
        from lstmflow.data.speech import read_speech

        first, second = read_speech(self.spec.data, f"pipelines.{self.spec.name}.data").clips[:2]
        sent = base64.b64encode(second.path.read_bytes()).decode()
        return pd.DataFrame({"path": [str(first.path), None], "audio_base64": [None, sent]})

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """One row per clip: its key (the request's row) and the transcript."""
        return pd.DataFrame({"key": list(frame.index), "text": self.transcribe(frame)})

    def transcribe(self, frame: pd.DataFrame, beam_width: int | None = None) -> list[str]:
        """The transcripts of the request's clips (BadRequest naming a row that is neither a readable file nor
        audio bytes)."""
        require_clip_columns(frame, "audio_base64")
        clips = [
            torch.from_numpy(self.preprocessing.encode(self._frames(row, cells))) for row, cells in frame.iterrows()
        ]
        width = self.spec.evaluate.beam_width if beam_width is None else beam_width
        return transcribe_frames(self.model, self.alphabet, clips, width)

    def _frames(self, row: Any, cells: pd.Series) -> np.ndarray:
        """A request row's clip as unscaled (T, F) features."""
        from lstmflow.data.audio import clip_features, read_clip

        name, source = clip_source(self.files, row, cells, "audio_base64")
        return decoded(name, lambda: clip_features(*read_clip(source), self.spec.data))
