"""MLflow system metrics for training and evaluation: CPU utilisation, system memory, disk and
network (and each GPU's utilisation and memory where NVML answers), sampled by MLflow's own
monitors and logged under MLflow's names (``system/cpu_utilization_percentage``, ...), which the
run page's "System metrics" tab plots; plus this process's resident memory
(``system/process_memory_rss_megabytes``: the machine's memory counts every other job too).

MLflow's ``SystemMetricsMonitor`` is not used as it is: it stops as soon as its run is not
RUNNING (evaluation logs into the finished training run) and a store it cannot reach ends it.
Here a thread samples every ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds (10) and sends
what it has every minute; a send that fails keeps the samples for the next one and never stops
the work. ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false`` turns it off. A stage that resumes or
evaluates a run continues its steps after the ones already logged.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager

import psutil
from mlflow.system_metrics.metrics.base_metrics_monitor import BaseMetricsMonitor
from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

SEND_SECONDS = 60.0
PREFIX = "system/"
STEP_KEY = PREFIX + "cpu_utilization_percentage"   # every sample has it


def enabled() -> bool:
    return os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true").strip().lower() not in ("false", "0", "no")


def sampling_interval() -> float:
    try:
        return max(0.1, float(os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", 10)))
    except ValueError:
        return 10.0


class ProcessMonitor(BaseMetricsMonitor):
    """This process's resident memory (MLflow's monitors see the whole machine's)."""

    def __init__(self):
        super().__init__()
        self.process = psutil.Process()

    def collect_metrics(self):
        self._metrics["process_memory_rss_megabytes"].append(self.process.memory_info().rss / 1e6)

    def aggregate_metrics(self):
        return {k: round(sum(v) / len(v), 1) for k, v in self._metrics.items()}


def monitors() -> list[BaseMetricsMonitor]:
    """MLflow's CPU, disk and network monitors, its GPU monitor where NVML answers, and ours."""
    found = [CPUMonitor(), DiskMonitor(), NetworkMonitor(), ProcessMonitor()]
    try:
        found.append(GPUMonitor())
    except (ImportError, RuntimeError):   # no nvidia-ml-py, or no GPU/driver: nothing to sample
        pass
    return found


class Sampler:
    """Samples into a buffer on a thread; ``send`` hands the buffer to the tracker."""

    def __init__(self, tracker, run_id: str):
        self.tracker, self.run_id = tracker, run_id
        self.monitors = monitors()
        self.step = next_step(tracker, run_id)
        self.rows: list[tuple[str, float, int, int]] = []
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        psutil.cpu_percent()   # the first reading only starts the interval it measures
        self.thread = threading.Thread(target=self.loop, name="gbml-system-metrics", daemon=True)

    def sample(self) -> None:
        values = {}
        for monitor in self.monitors:
            monitor.collect_metrics()
            values.update(monitor.aggregate_metrics())
            monitor.clear_metrics()
        now = int(time.time() * 1000)
        with self.lock:
            self.rows += [(PREFIX + k, float(v), self.step, now) for k, v in values.items()]
            self.step += 1

    def send(self) -> bool:
        with self.lock:
            rows, self.rows = self.rows, []
        try:
            if rows:
                self.tracker.log_metrics(self.run_id, rows)
            return True
        except Exception:   # the store is busy or gone: keep them for the next send
            with self.lock:
                self.rows = rows + self.rows
            return False

    def loop(self) -> None:
        interval, last_send = sampling_interval(), time.monotonic()
        while not self.stop_event.wait(interval):
            self.sample()
            if time.monotonic() - last_send >= SEND_SECONDS:
                self.send()
                last_send = time.monotonic()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join()
        self.sample()   # the last moments, and a short stage's only sample
        if not self.send():
            print(f"MLflow run {self.run_id}: its last system metrics could not be logged (the store is unavailable)")


def next_step(tracker, run_id: str) -> int:
    """The step after the run's last system-metrics sample (0 for a new run)."""
    history = tracker.metric_history(run_id, STEP_KEY)
    return history[-1][0] + 1 if history else 0


@contextmanager
def system_metrics(tracker, run_id: str | None):
    """Sample and log the system metrics of the ``with`` block into ``run_id`` (nothing without a
    tracker or when turned off)."""
    if tracker is None or run_id is None or not enabled():
        yield
        return
    sampler = Sampler(tracker, run_id)
    sampler.thread.start()
    try:
        yield
    finally:
        sampler.stop()
