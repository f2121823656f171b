"""A run's training log, in the forms people read it with.

Each record (stage, epoch, step, the running losses or an evaluation's map50, seconds) goes to
``RUN/log.jsonl`` (one JSON object a line, what ``plot_losses`` reads), to ``RUN/log.csv``
(the same records under one header, for spreadsheets and pandas; a record with a new column
rewrites the file with the wider header) and, when the ``tensorboard`` package is installed,
to TensorBoard event files in ``RUN/tensorboard/`` (one scalar per number, tagged
``stage/name``). TensorBoard is optional: without it the other two are written all the same.
"""

from __future__ import annotations

import csv
import importlib
import json
from pathlib import Path

LOG = "log.jsonl"
CSV = "log.csv"
TENSORBOARD = "tensorboard"
NOT_SCALARS = {"stage", "epoch", "step"}  # a record's position, not a curve


class RunLog:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.columns = _csv_header(self.run_dir / CSV)
        self.writer = _summary_writer(self.run_dir / TENSORBOARD)

    def write(self, record: dict) -> None:
        with open(self.run_dir / LOG, "a") as file:
            file.write(json.dumps(record) + "\n")
        self.write_csv(record)
        self.write_tensorboard(record)

    def write_csv(self, record: dict) -> None:
        """Append the record, or rewrite log.csv from log.jsonl when it brings a new column."""
        new = [key for key in record if key not in self.columns]
        if not new:
            with open(self.run_dir / CSV, "a", newline="") as file:
                csv.DictWriter(file, self.columns).writerow(record)
            return
        self.columns += new
        lines = (self.run_dir / LOG).read_text().splitlines()
        with open(self.run_dir / CSV, "w", newline="") as file:
            writer = csv.DictWriter(file, self.columns)
            writer.writeheader()
            writer.writerows(json.loads(line) for line in lines)

    def write_tensorboard(self, record: dict) -> None:
        if self.writer is None:
            return
        for key, value in record.items():
            if key not in NOT_SCALARS and isinstance(value, int | float):
                self.writer.add_scalar(f"{record['stage']}/{key}", value, record["step"])
        self.writer.flush()


def _csv_header(path: Path) -> list[str]:
    """The columns of an existing log.csv (a resumed run appends to it), else none."""
    if not path.is_file():
        return []
    with open(path, newline="") as file:
        return next(csv.reader(file), [])


def _summary_writer(log_dir: Path):
    """TensorBoard's SummaryWriter on ``log_dir``, or None when tensorboard is not installed."""
    try:
        tensorboard = importlib.import_module("torch.utils.tensorboard")
    except ImportError:
        return None
    return tensorboard.SummaryWriter(str(log_dir))
