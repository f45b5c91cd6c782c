"""The recorded ``run-real`` measurements of docs/cpu, one machine kind each, and the
comparisons made with them.

``docs/cpu/records.json`` lists the runs (the JSON reports ``hart-edu run-real --json`` wrote)
with the machine kind each was measured on (:attr:`hart_edu.cpu_dtype.CpuFeatures.kind`:
"AMX", "AVX2", ...); the numbers themselves are read from the reports. ``run-real`` prints one
line comparing its run with the record of the closest machine kind
(:func:`comparison_line`), and ``python -m hart_edu.cpu_records`` prints the README's table.

The records come with the source checkout (docs/ is not part of the wheel): without them the
comparison says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from hart_edu.paths import REPO_ROOT

__all__ = ["RECORDS_FILE", "KIND_ORDER", "Record", "load_records", "closest_records", "comparison_line",
           "memory_warning", "markdown_table"]

RECORDS_FILE = REPO_ROOT / "docs" / "cpu" / "records.json"
# machine kinds from the most to the least capable for this work; "closest" = nearest in this order
KIND_ORDER: tuple[str, ...] = ("AMX", "AVX-512 BF16", "AVX512", "AVX2", "DEFAULT")
GIB = 1024**3


@dataclass(frozen=True)
class Record:
    """One recorded run: where (kind, cpu, threads), how (dtype, quantize) and what it took."""

    kind: str
    size: str  # run-real --size
    cpu: str
    threads: int
    dtype: str
    quantize: str
    date: str
    total_seconds: float
    peak_bytes: int  # the larger of the call's peak and the build's peak
    seconds: dict[str, float]
    file: str
    note: str = ""

    def short(self) -> str:
        how = self.dtype + (f" + {self.quantize}" if self.quantize != "none" else "")
        return (f"{self.kind} ({self.cpu}, {self.threads} threads, {how}, {self.date[:10]}): "
                f"{self.total_seconds:.1f} s, peak RSS {self.peak_bytes / GIB:.2f} GiB")


def load_records(path: Path = RECORDS_FILE) -> list[Record]:
    """The runs listed in ``path``, their numbers read from the reports beside it. A missing
    index gives []; a listed report that is missing or malformed raises ValueError."""
    if not path.is_file():
        return []
    records = []
    for entry in json.loads(path.read_text(encoding="utf-8"))["runs"]:
        report_path = path.parent / entry["file"]
        try:
            report = json.loads(report_path.read_text(encoding="utf-8"))
            extra = report["extra"]
            build_peak = int(extra.get("peak RSS while building (GiB)", 0) * GIB)
            records.append(Record(
                kind=entry["kind"], size=entry["size"], cpu=extra["machine"]["cpu"], threads=int(report["threads"]),
                dtype=report["dtype"], quantize=extra.get("quantize", "none"), date=extra["machine"]["date"],
                total_seconds=float(report["total_seconds"]),
                peak_bytes=max(int(report["peak_total_bytes"]), build_peak),
                seconds={k: float(v) for k, v in report["seconds"].items()}, file=entry["file"],
                note=entry.get("note", "")))
        except (OSError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path} lists {report_path}, which is not a run-real report: {err}") from None
    return records


def closest_records(records: list[Record], kind: str) -> list[Record]:
    """The records of ``kind``, else of the nearest kind in :data:`KIND_ORDER` (the more
    capable one on a tie); [] when there are none."""
    if not records:
        return []
    position = {k: i for i, k in enumerate(KIND_ORDER)}
    here = position.get(kind, len(KIND_ORDER))
    best = min(records, key=lambda r: (abs(position.get(r.kind, len(KIND_ORDER)) - here),
                                       position.get(r.kind, len(KIND_ORDER))))
    return [r for r in records if r.kind == best.kind]


def _same_setting(records: list[Record], dtype: str, quantize: str) -> list[Record]:
    return [r for r in records if (r.dtype, r.quantize) == (dtype, quantize)]


def comparison_line(total_seconds: float, peak_bytes: int, kind: str, size: str, dtype: str, quantize: str,
                    records: list[Record] | None = None) -> str:
    """One line: this run against the recorded run of ``size`` on the closest machine kind (the
    same dtype and quantization when recorded, else that kind's first record)."""
    records = load_records() if records is None else records
    if not records:
        return f"no recorded runs to compare with ({RECORDS_FILE} comes with the source checkout)"
    candidates = closest_records([r for r in records if r.size == size], kind)
    if not candidates:
        recorded = ", ".join(sorted({r.size for r in records}))
        return f"no recorded run of --size {size} to compare with (docs/cpu records {recorded})"
    record = (_same_setting(candidates, dtype, quantize) or candidates)[0]
    relation = "the same kind" if record.kind == kind else f"the closest kind to {kind}"
    return (f"compared with the recorded run on {relation}, {record.short()}: this run "
            f"{total_seconds:.1f} s (x{total_seconds / record.total_seconds:.2f}), "
            f"peak RSS {peak_bytes / GIB:.2f} GiB (docs/cpu/{record.file})")


def memory_warning(kind: str, size: str, dtype: str, quantize: str, available: int | None,
                   records: list[Record] | None = None) -> str | None:
    """A line before a run whose setting peaked, in the records of the closest machine kind, above
    the ``available`` bytes (:func:`hart_edu.memory.available_bytes`): it would swap or be killed.
    Names the recorded setting with the lowest peak when that one fits. None when it fits, or
    when nothing is recorded to judge by."""
    records = load_records() if records is None else records
    nearby = closest_records([r for r in records if r.size == size], kind)
    same = _same_setting(nearby, dtype, quantize)
    if available is None or not same:
        return None
    peak = max(same, key=lambda r: r.peak_bytes)
    if peak.peak_bytes <= available:
        return None
    line = (f"this setting ({dtype}{' + ' + quantize if quantize != 'none' else ''}) peaked at "
            f"{peak.peak_bytes / GIB:.2f} GiB in the recorded run (docs/cpu/{peak.file}), more than the "
            f"{available / GIB:.2f} GiB available now: it may swap or be killed")
    lightest = min(nearby, key=lambda r: r.peak_bytes)
    if lightest.peak_bytes <= available:
        flags = [f"--dtype {lightest.dtype}"] if lightest.dtype != dtype else []
        flags += [f"--quantize {lightest.quantize}"] if lightest.quantize != quantize else []
        line += f"; {' '.join(flags)} peaked at {lightest.peak_bytes / GIB:.2f} GiB"
    return line


PHASES = ("text encoder", "transformer", "diffusion", "VAE decoder")


def markdown_table(records: list[Record]) -> str:
    """The README's table: one row per record, phase times, total and peak. The date matters:
    the same machine kind rented on another day can run the same code at another speed."""
    head = ("| machine kind | CPU | date | threads | dtype | " + " | ".join(PHASES)
            + " | one 1024px image | peak RSS | report |")
    rule = "|" + "---|" * (head.count("|") - 1)
    rows = [head, rule]
    for r in records:
        how = r.dtype + (f" + {r.quantize}" if r.quantize != "none" else "")
        phases = " | ".join(f"{r.seconds[p]:.1f} s" if p in r.seconds else "" for p in PHASES)
        rows.append(f"| {r.kind} | {r.cpu} | {r.date[:10]} | {r.threads} | {how} | {phases} | **{r.total_seconds:.1f} s** | "
                    f"{r.peak_bytes / GIB:.2f} GiB | `docs/cpu/{r.file}` |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hart_edu.cpu_records",
                                     description="Print the table of the recorded run-real runs (docs/cpu).")
    parser.add_argument("--records", type=Path, default=RECORDS_FILE)
    args = parser.parse_args(argv)
    print(markdown_table(load_records(args.records)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
