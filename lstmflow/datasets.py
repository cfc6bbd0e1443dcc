"""The demo data sets, written from copies shipped inside the statsmodels wheel: nothing is downloaded.

- ``sunspots.csv``: yearly mean sunspot numbers 1700-2008 (``year``, ``sunactivity``), 309 rows.
- ``co2.csv``: Mauna Loa CO2 (ppm) as monthly means of the weekly flask samples (``date``, ``co2``),
  1958-03 to 2001-12, 526 rows. Five months have no sample at all and stay empty, so the gap interpolation of
  the data stage is exercised on real gaps. Monthly rather than weekly because the weekly default (season 52,
  so horizon 52 and window 208) makes an epoch about 18 times the work of a monthly one
  (season 12, horizon 12, window 48): monthly, 20 epochs of an LSTM of 64 units took under a second on one
  CPU thread here.

Run as ``python -m lstmflow.datasets OUT_DIR`` (the first DVC stage). The bytes written depend only on the
statsmodels data, so DVC sees an unchanged output when nothing changed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

LICENSE_TEXT = """\
# Data sources and licences

Both files are written by `python -m lstmflow.datasets` from copies of the data that ship inside the
statsmodels package (BSD-3-Clause), which states their sources and licences as follows.

## sunspots.csv

Yearly (1700-2008) mean sunspot numbers, from `statsmodels.datasets.sunspots`.
Source: NOAA National Geophysical Data Center, http://www.ngdc.noaa.gov/stp/solar/solarda3.html
Licence: public domain ("This data is public domain.", statsmodels' dataset notes).
Columns renamed from YEAR, SUNACTIVITY to year, sunactivity.

## co2.csv

Atmospheric CO2 (ppm) from continuous air samples at Mauna Loa Observatory, Hawaii, U.S.A.,
weekly 1958-03-29 to 2001-12-29, from `statsmodels.datasets.co2`, here averaged per calendar month
(rounded to 0.001 ppm); months without any sample are left empty.
Source: http://cdiac.ornl.gov/trends/co2/sio-keel-flask/sio-keel-flaskmlo_c.html
Citation: Keeling, C.D. and T.P. Whorf. 2004. Atmospheric CO2 concentrations derived from flask air samples
at sites in the SIO network. In Trends: A Compendium of Data on Global Change. Carbon Dioxide Information
Analysis Center, Oak Ridge National Laboratory, U.S. Department of Energy, Oak Ridge, Tennessee, U.S.A.
Licence: public domain ("This is public domain.", statsmodels' dataset notes).
"""


def _sunspots() -> pd.DataFrame:
    from statsmodels.datasets import sunspots

    data = sunspots.load_pandas().data
    return pd.DataFrame({"year": data["YEAR"].astype(int), "sunactivity": data["SUNACTIVITY"]})


def _co2_monthly() -> pd.DataFrame:
    """Calendar-month means of the weekly series; a month with no sample at all stays NaN (a real gap)."""
    from statsmodels.datasets import co2

    monthly = co2.load_pandas().data["co2"].resample("MS").mean()
    return pd.DataFrame({"date": monthly.index.strftime("%Y-%m-%d"), "co2": monthly.round(3).to_numpy()})


def build_demo_data(out_dir: Path) -> list[Path]:
    """Write sunspots.csv, co2.csv and LICENSE-DATA.md into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame, decimals in (("sunspots.csv", _sunspots(), "%.1f"), ("co2.csv", _co2_monthly(), "%.3f")):
        path = out_dir / name
        frame.to_csv(path, index=False, float_format=decimals, na_rep="", lineterminator="\n")
        written.append(path)
    licence = out_dir / "LICENSE-DATA.md"
    licence.write_text(LICENSE_TEXT)
    return [*written, licence]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m lstmflow.datasets OUT_DIR", file=sys.stderr)
        return 2
    for path in build_demo_data(Path(args[0])):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
