"""Video frame stage: decoding throughput (frames per second), parallel speed-up, an unchanged re-run, 10% more clips.

Generates N demo clips (``build_video_demo``: H.264 mp4, 32x32, 16 frames at 8 fps) and times
``prepare_video_features`` (frames kept at 32x32, RGB) for the four runs of ``_clip_stage.py``: 1 worker and an empty
cache, 2 workers and another empty cache, a re-run with nothing changed, and 10% more clips on the same cache.
The throughput counts the frames written to the store per second of the whole stage (listing, hashing, decoding,
resizing, caching and writing).

A worker joins only per ``BYTES_PER_PROCESS`` (2 MB) of clips to decode, about 750 demo clips, since a short clip
decodes in milliseconds and a worker costs about a second to start: below that the second run uses one process too.

    python benchmarks/video_frames.py [--clips 2000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
from _clip_stage import print_runs, time_clip_stage  # benchmarks/ is the script's folder, so on sys.path

from lstmflow.config import VideoSpec
from lstmflow.data.demo import SHAPE_DIRECTIONS, SHAPE_FRAME, SHAPE_FRAMES, build_video_demo
from lstmflow.data.video import prepare_video_features

WHERE = "benchmark.data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=2000, help="clips in the full set (a tenth more are added)")
    args = parser.parse_args()
    per_class = args.clips // len(SHAPE_DIRECTIONS)

    work = Path(tempfile.mkdtemp(prefix="lstmflow-video-bench-"))
    try:
        clips = work / "clips"
        build_video_demo(clips, seed=1, per_class=per_class)
        spec = {"kind": "video", "path": clips, "frame_size": [SHAPE_FRAME, SHAPE_FRAME]}

        def run(workers: int, cache: str) -> dict:
            one = VideoSpec.model_validate({**spec, "workers": workers})
            summary = prepare_video_features(one, work / f"out-{cache}", WHERE, work / cache)
            return {**summary, "frames": int(np.load(work / f"out-{cache}" / "offsets.npy")[-1])}

        def add_tenth() -> None:
            extra = work / "extra"
            build_video_demo(extra, seed=3, per_class=max(1, per_class // 10))
            for file in extra.rglob("*.mp4"):
                shutil.copy(file, clips / file.parent.name / f"extra-{file.name}")

        # Warm the parent's imports (PyAV, the store's torch) so run 1 is not charged for them.
        build_video_demo(work / "warm", seed=2, per_class=2)
        warm = VideoSpec.model_validate({**spec, "path": work / "warm", "workers": 1})
        prepare_video_features(warm, work / "o", WHERE, work / "warm-cache")
        runs = time_clip_stage(run, add_tenth, lambda summary, seconds: f"{summary['frames'] / seconds:.0f} frames/s")
        size = sum(file.stat().st_size for file in clips.rglob("*.mp4")) / 1e6
    finally:
        shutil.rmtree(work)

    first = runs[0].summary
    print(
        f"{first['n_sequences']} clips ({size:.1f} MB), {first['frames']} frames of {SHAPE_FRAME}x{SHAPE_FRAME} RGB "
        f"({SHAPE_FRAMES} per clip), H.264 mp4 decoded with PyAV"
    )
    print_runs(runs)


if __name__ == "__main__":
    main()
