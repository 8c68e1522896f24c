"""The reference capture committed in ``lab/reference/``, for users and tests that cannot capture.

    sudo python -m lab.reference [OUT_DIR]

runs the lab with every scenario, shortened so the file stays small (the flood lasts half a
second instead of four), and writes ``capture.pcap.gz`` and ``labels.json`` into OUT_DIR
(default: ``lab/reference``). ``soc demo`` collects it when it may not capture loopback.
"""

from __future__ import annotations

import asyncio
import gzip
import shutil
import sys
from pathlib import Path

import orjson

from lab import attacks_modbus
from lab.base import LabSite
from lab.run import load_scenarios, run_lab

HERE = Path(__file__).resolve().parent / "reference"
#: the scenarios' dwell times for the reference: every attack, a smaller file
SHORT = attacks_modbus.Timing(
    watch_s=2.0, toggle_s=1.0, restart_gap_s=1.5, listen_only_s=3.0, flood_s=0.5
)


def build(out: Path, normal_s: float = 10.0) -> Path:
    """Run the lab into ``out`` and compress its capture; the compressed file."""
    attacks_modbus.TIMING = SHORT
    result = asyncio.run(
        run_lab(LabSite(), list(load_scenarios()), out, normal_s=normal_s, gap_s=1.0, seed=0)
    )
    if result.capture is None:
        raise SystemExit(f"no capture ({result.capture_note}): run as root")
    packed = out / "capture.pcap.gz"
    with result.capture.open("rb") as raw, gzip.open(packed, "wb", compresslevel=9) as gz:
        shutil.copyfileobj(raw, gz)
    result.capture.unlink()
    (out / "values.json").unlink(missing_ok=True)  # large; the labels are what users need
    labels = orjson.loads((out / "labels.json").read_bytes())
    labels["capture"] = packed.name
    (out / "labels.json").write_bytes(orjson.dumps(labels, option=orjson.OPT_INDENT_2))
    return packed


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    path = build(target)
    print(f"wrote {path} ({path.stat().st_size:,} bytes) and {target / 'labels.json'}")
