"""Report: the RESULT lines, a log file repeating what was printed, and the JSON, rewritten after every part
(so a killed run still leaves its results).

    RESULT <name> ours=<x> ref=<y> unit=<u> ratio=<r> target=<t> met=<yes|NO|n/a>

ratio is always the speed-up of ours: ours/ref for rates (images/s), ref/ours for times (ms). CUDA targets
read "n/a" on a CPU.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Optional

from benchmarks.gpu_check.runtime import elapsed


class Report:
    def __init__(self, out: Path, meta: dict):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.json_path = out / "gpu_check.json"
        self.log_path = out / "gpu_check.log"
        self.log_path.write_text("")
        self.data: dict[str, Any] = {"meta": meta, "parts": {}, "results": []}

    def log(self, msg: str = "") -> None:
        print(msg, flush=True)
        with open(self.log_path, "a") as f:
            f.write(msg + "\n")

    def result(self, name: str, part: str, ours: float, ref: float, unit: str, higher_is_better: bool,
               target: Optional[float], cuda_target: bool = True, note: str = "", ours_label: str = "ours",
               ref_label: str = "reference") -> dict:
        """One comparison: ratio = speed-up of ours (ours/ref for rates, ref/ours for times)."""
        ratio = (ours / ref if higher_is_better else ref / ours) if ours > 0 and ref > 0 else float("nan")
        applies = target is not None and (not cuda_target or self.data["meta"]["device"] == "cuda")
        met = (ratio >= target) if applies else None
        entry = {"name": name, "part": part, "ours": ours, "ref": ref, "unit": unit,
                 "higher_is_better": higher_is_better, "ratio": ratio, "target": target,
                 "target_applies": applies, "met": met, "ours_label": ours_label, "ref_label": ref_label,
                 "note": note}
        self.data["results"].append(entry)
        tgt = f">={target:g}" if target is not None else "report"
        flag = "n/a" if met is None else ("yes" if met else "NO")
        self.log(f"RESULT {name} ours={fmt(ours)} ref={fmt(ref)} unit={unit} ratio={ratio:.2f} "
                 f"target={tgt} met={flag}" + (f"  # {note}" if note else ""))
        self.save()
        return entry

    def value(self, name: str, part: str, value: float, unit: str, note: str = "") -> dict:
        """A figure without a reference (e.g. mAP, TFLOP/s)."""
        entry = {"name": name, "part": part, "value": value, "unit": unit, "note": note}
        self.data["results"].append(entry)
        self.log(f"RESULT {name} value={fmt(value)} unit={unit}" + (f"  # {note}" if note else ""))
        self.save()
        return entry

    def failed(self, part_key: str, exc: BaseException) -> None:
        msg = one_line(exc)
        self.data["results"].append({"name": part_key, "failed": True, "error": msg})
        self.log(f"RESULT {part_key} FAILED: {msg}")

    def save(self) -> None:
        self.data["meta"]["elapsed_s"] = round(elapsed(), 2)
        tmp = self.json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=_json_default, allow_nan=True))
        os.replace(tmp, self.json_path)


def fmt(x: float) -> str:
    if x is None or not math.isfinite(x):
        return str(x)
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:.0f}"


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:400]
