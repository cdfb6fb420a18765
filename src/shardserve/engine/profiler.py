"""Profile what every rank does between `LLM.start_profile(dir)` and `LLM.stop_profile()`.

Each rank runs torch's profiler (CPU ops and, on a GPU, its kernels) over the steps in between
and writes, into `dir`:
  rank{r}.trace.json   a Chrome / Perfetto trace (open it in ui.perfetto.dev)
  rank{r}.txt          the ops by total CPU time and by total device time
so the host time of a step (Python, launches, waits) can be told from its kernels' time, rank by
rank. Ranks are other processes under tensor parallelism, which a profiler started by the
caller would not see.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile


class RankProfiler:
    def __init__(self, rank: int, device: torch.device):
        self.rank, self.device = rank, device
        self._session: profile | None = None
        self._dir: Path | None = None

    def start(self, out_dir: str) -> None:
        assert self._session is None, "LLM.start_profile checks this"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        self._dir = Path(out_dir)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._session = profile(activities=activities)
        self._session.__enter__()

    def stop(self) -> list[str]:
        """Stop and write this rank's files; returns their paths."""
        assert self._session is not None, "LLM.stop_profile checks this"
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # kernels still in flight belong to the profile
        session, self._session = self._session, None
        session.__exit__(None, None, None)
        trace = self._dir / f"rank{self.rank}.trace.json"
        session.export_chrome_trace(str(trace))
        averages = session.key_averages()
        tables = [averages.table(sort_by="cpu_time_total", row_limit=30)]
        if self.device.type == "cuda":
            tables.append(averages.table(sort_by="device_time_total", row_limit=30))
        summary = self._dir / f"rank{self.rank}.txt"
        summary.write_text("\n".join(tables))
        return [str(trace), str(summary)]
