"""Audio feature stage: parallel speed-up, a re-run with nothing changed, and adding 10% more clips.

Generates N demo chirps (``build_audio_demo``: 16 kHz, 0.5-1.0 s by default) and times ``prepare_audio_features``
(log-mel with deltas, the heavier setting) for:

1. a full run with 1 worker and an empty cache;
2. a full run with 2 workers and another empty cache (target: at least 1.7× faster than 1);
3. a re-run with nothing changed, on run 2's cache (target: at least 50× faster than run 2);
4. a run after adding 10% more clips, on the same cache (target: at most 20% of run 2's time).

Each worker pays its own start-up (about 2 s: Python, numpy, librosa), so the speed-up grows with N. Results
depend on the machine being otherwise idle: other CPU-bound work on the cores shrinks the parallel speed-up.

    python benchmarks/audio_features.py [--clips 3000] [--seconds 0.5 1.0]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from _clip_stage import print_runs, time_clip_stage  # benchmarks/ is the script's folder, so on sys.path

from lstmflow.config import AudioSpec
from lstmflow.data.audio import prepare_audio_features
from lstmflow.data.demo import build_audio_demo

WHERE = "benchmark.data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=3000, help="clips in the full set (a tenth more are added)")
    parser.add_argument("--seconds", type=float, nargs=2, default=(0.5, 1.0), help="range of clip lengths")
    args = parser.parse_args()
    per_class = args.clips // 3

    work = Path(tempfile.mkdtemp(prefix="lstmflow-audio-bench-"))
    try:
        clips = work / "clips"
        build_audio_demo(clips, clips_per_class=per_class, seed=1, seconds=tuple(args.seconds))
        spec = {"kind": "audio", "path": clips, "deltas": True}

        def run(workers: int, cache: str) -> dict:
            one = AudioSpec.model_validate({**spec, "workers": workers})
            return prepare_audio_features(one, work / f"out-{cache}", WHERE, work / cache)

        def add_tenth() -> None:
            extra = work / "extra"
            build_audio_demo(extra, clips_per_class=max(1, per_class // 10), seed=3, seconds=tuple(args.seconds))
            for file in extra.rglob("*.wav"):
                shutil.copy(file, clips / file.parent.name / f"extra-{file.name}")

        # Warm the parent's imports (librosa, numba's cache) so run 1 is not charged for them.
        warm = work / "warm"
        build_audio_demo(warm, clips_per_class=2, seed=2)
        prepare_audio_features(
            AudioSpec.model_validate({**spec, "path": warm, "workers": 1}), work / "o", WHERE, work / "warm-cache"
        )
        runs = time_clip_stage(
            run, add_tenth, lambda summary, seconds: f"{summary['n_sequences'] / seconds:.0f} clips/s"
        )
    finally:
        shutil.rmtree(work)

    print(
        f"{runs[0].summary['n_sequences']} clips of {args.seconds[0]}-{args.seconds[1]} s, log-mel 40 + deltas, 16 kHz"
    )
    print_runs(runs)


if __name__ == "__main__":
    main()
