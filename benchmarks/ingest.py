"""The ingestion figures in one place: windowing, padding, audio features, video frames and tokenization, one report.

Runs each ingestion benchmark as its own process (so none inherits another's imports or caches), one after the
other, with its default arguments (or ``--quick`` ones), and prints their tables under one heading with the machine
and date; appends the report to ``benchmarks/RESULTS.md``. Each script also runs alone:

- ``windowing.py``: memory and batch throughput of the window store vs materialised windows (10M points);
- ``padding.py``: padded fraction of length-bucketed batches vs random batches;
- ``audio_features.py``: log-mel extraction with 1 and 2 workers, an unchanged re-run and 10% more clips;
- ``video_frames.py``: video decoding (frames per second) with 1 and 2 workers, an unchanged re-run and 10% more clips;
- ``tokenization.py``: fit and encode throughput of the word, char and bpe tokenizers (10 MB).

    python benchmarks/ingest.py [--quick] [--no-append] [--only video_frames.py ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from _report import heading, publish  # benchmarks/ is the script's folder, so on sys.path

HERE = Path(__file__).resolve().parent
#: Each benchmark with the arguments of a quick look (a few seconds each) for ``--quick``.
BENCHMARKS = {
    "windowing.py": ["--points", "1000000", "--baseline-windows", "200000"],
    "padding.py": [],
    "audio_features.py": ["--clips", "300"],
    "video_frames.py": ["--clips", "400"],
    "tokenization.py": ["--mb", "1", "--repeats", "1"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller inputs: a check that every script runs")
    parser.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run these benchmarks alone")
    args = parser.parse_args()
    sections = []
    for script, quick in BENCHMARKS.items():
        if args.only and script not in args.only:
            continue
        command = [sys.executable, str(HERE / script), *(quick if args.quick else [])]
        print(f"running {' '.join(command[1:])} ...", flush=True)
        started = time.perf_counter()
        done = subprocess.run(command, check=False, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{script} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        seconds = time.perf_counter() - started
        shown = " ".join(["python", f"benchmarks/{script}", *(quick if args.quick else [])])
        sections.append(f"### `{shown}` ({seconds:.0f} s)\n\n```\n{done.stdout.strip()}\n```\n")
    title = heading("ingestion", f"python benchmarks/ingest.py{' --quick' if args.quick else ''}")
    publish("\n".join([title, *sections]), append=not args.no_append)


if __name__ == "__main__":
    main()
