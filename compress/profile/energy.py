"""Energy over a block of code, from the best source this machine has.

Order of preference:
1. NVML on a CUDA device: the total-energy counter (mJ); if the GPU does not support it,
   power readings sampled on a thread and integrated over time. Status "measured".
2. Intel RAPL (CPU runs): package-domain counters under /sys/class/powercap (uJ, wraparound
   handled with max_energy_range_uj). Status "measured", but package-wide: everything running
   on the socket is counted, not just this process.
3. A power figure stated by the caller (the recipe's `profile.power_watts`) times wall time.
   Status "estimated".
4. Otherwise status "unavailable", joules None (never 0), with a reason naming each source
   that was tried and why it failed.

A measured energy must be positive: a counter that did not move during the window (0 J, or a
delta that is not positive) gives "unavailable" with the reason NO_MOVEMENT, never a measured
0 J (counters that update slower than the window, or stopped counters, look like this).

The NVML module and the RAPL root are injectable so tests need neither a GPU nor root.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RAPL_ROOT = Path("/sys/class/powercap")
_PACKAGE = re.compile(r"^intel-rapl:\d+$")  # package domains; intel-rapl:0:0 etc. are subzones
NO_MOVEMENT = "the energy counter did not move during the measured window"


@dataclass
class EnergyResult:
    joules: float | None
    status: str  # "measured" | "estimated" | "unavailable"
    reason: str | None
    source: str  # "nvml" | "nvml-power" | "rapl" | "stated-power" | "none"
    wall_s: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _load_pynvml() -> Any:
    import pynvml  # from the optional `nvidia-ml-py` package

    return pynvml


class _Nvml:
    """NVML total-energy counter, or sampled power when the counter is not supported."""

    def __init__(self, nvml: Any, index: int, interval_s: float):
        self.nvml = nvml
        self.interval_s = interval_s
        nvml.nvmlInit()
        self.handle = nvml.nvmlDeviceGetHandleByIndex(index)
        try:
            nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
            self.source = "nvml"
        except Exception as e:  # NVMLError_NotSupported on older GPUs
            log.info("NVML total energy unsupported (%s); sampling power instead", e)
            nvml.nvmlDeviceGetPowerUsage(self.handle)  # raises if power is unsupported too
            self.source = "nvml-power"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._joules = 0.0

    def start(self) -> None:
        if self.source == "nvml":
            self._mj0 = self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
            return
        self._joules = 0.0
        self._stop.clear()  # the meter may be entered once per repeat
        self._last = (time.perf_counter(), self._watts())
        self._t_start = self._last[0]
        self.span_s = None
        self._thread = threading.Thread(target=self._run, name="nvml-power", daemon=True)
        self._thread.start()

    def _watts(self) -> float:
        return self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0  # mW -> W

    def _sample(self) -> None:
        t, w = time.perf_counter(), self._watts()
        t0, w0 = self._last
        self._joules += (t - t0) * (w + w0) / 2.0  # trapezoid
        self._last = (t, w)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def stop(self) -> float:
        if self.source == "nvml":
            mj1 = self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
            return (mj1 - self._mj0) / 1000.0
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        self.span_s = self._last[0] - self._t_start  # the span the integral really covers
        return self._joules

    def close(self) -> None:
        with contextlib.suppress(Exception):  # best effort
            self.nvml.nvmlShutdown()


class _Rapl:
    """Sum of the package-domain RAPL counters."""

    def __init__(self, root: Path):
        if not root.is_dir():
            raise FileNotFoundError(f"{root} absent")
        zones = sorted(p for p in root.iterdir() if _PACKAGE.match(p.name))
        if not zones:
            raise FileNotFoundError(f"no intel-rapl package domains under {root}")
        self.zones = zones
        self.ranges = []
        for z in zones:
            try:
                self.ranges.append(int((z / "max_energy_range_uj").read_text().strip()))
            except (OSError, ValueError):
                self.ranges.append(None)
        self._read()  # permission problems surface here (energy_uj is root-only on many kernels)

    def _read(self) -> list[int]:
        out = []
        for z in self.zones:
            try:
                out.append(int((z / "energy_uj").read_text().strip()))
            except PermissionError:
                raise PermissionError(f"{z / 'energy_uj'} not readable (needs root)") from None
        return out

    def start(self) -> None:
        self._uj0 = self._read()

    def stop(self) -> float:
        uj1 = self._read()
        total = 0
        for a, b, rng in zip(self._uj0, uj1, self.ranges, strict=True):
            d = b - a
            if d < 0:  # the counter wrapped around
                if rng is None:
                    raise ValueError("RAPL counter wrapped and max_energy_range_uj is unknown")
                d += rng
            total += d
        return total / 1e6


class EnergyMeter:
    """Context manager: `with EnergyMeter(device, power_watts=...) as m: ...; m.result`.

    `device` is a torch device string ("cpu", "cuda", "cuda:1"). `nvml` replaces the pynvml
    module (tests), `rapl_root` the powercap folder.
    """

    def __init__(
        self,
        device: str = "cpu",
        *,
        power_watts: float | None = None,
        rapl_root: str | Path = RAPL_ROOT,
        nvml: Any = None,
        sample_interval_s: float = 0.02,
    ):
        self.device = str(device)
        self.power_watts = power_watts
        self.rapl_root = Path(rapl_root)
        self._nvml_module = nvml
        self.sample_interval_s = sample_interval_s
        self._backend: Any = None
        self.source = "none"
        self._tried: list[str] = []
        self.result: EnergyResult | None = None
        self._pick()

    # -- backend choice -------------------------------------------------------------------
    def _pick(self) -> None:
        is_cuda = self.device.startswith("cuda")
        if is_cuda:
            try:
                nvml = self._nvml_module if self._nvml_module is not None else _load_pynvml()
                index = int(self.device.split(":")[1]) if ":" in self.device else 0
                self._backend = _Nvml(nvml, index, self.sample_interval_s)
                self.source = self._backend.source
                return
            except ImportError:
                self._tried.append("NVML not installed (pip install nvidia-ml-py)")
            except Exception as e:
                self._tried.append(f"NVML failed ({type(e).__name__}: {e})")
            # RAPL would count the CPU package only, not the GPU doing the work: skip it.
            self._tried.append("RAPL skipped (it measures the CPU package, not the GPU)")
        else:
            self._tried.append("no NVML (CPU run)")
            try:
                self._backend = _Rapl(self.rapl_root)
                self.source = "rapl"
                return
            except FileNotFoundError as e:
                self._tried.append(str(e))
            except (OSError, ValueError) as e:
                self._tried.append(f"RAPL unreadable ({e})")
        if self.power_watts is not None:
            self.source = "stated-power"
        else:
            self._tried.append("no power_watts in the recipe")

    # -- context manager ------------------------------------------------------------------
    def __enter__(self) -> EnergyMeter:
        self.result = None
        if self._backend is not None:
            self._backend.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        wall = time.perf_counter() - self._t0
        if self._backend is not None:
            try:
                joules = self._backend.stop()
            except Exception as e:
                log.warning("energy reading failed: %s", e)
                self.result = EnergyResult(
                    None, "unavailable", f"{self.source} reading failed: {e}", self.source, wall
                )
                return
            wall = getattr(self._backend, "span_s", None) or wall  # energy and time: one span
            if not (joules is not None and math.isfinite(joules) and joules > 0):
                self.result = EnergyResult(
                    None, "unavailable", self._no_movement(joules), self.source, wall
                )
                return
            self.result = EnergyResult(joules, "measured", self._measured_note(), self.source, wall)
        elif self.source == "stated-power":
            assert self.power_watts is not None
            self.result = EnergyResult(
                self.power_watts * wall,
                "estimated",
                f"power_watts x wall time, stated in the recipe ({self.power_watts:g} W); "
                f"not measured: {', '.join(self._tried)}",
                self.source,
                wall,
            )
        else:
            self.result = EnergyResult(None, "unavailable", ", ".join(self._tried), "none", wall)

    def _no_movement(self, joules: float | None) -> str:
        what = {
            "nvml": "NVML total-energy counter",
            "nvml-power": "NVML power integral",
            "rapl": "RAPL package counters",
        }.get(self.source, self.source)
        return (
            f"{NO_MOVEMENT} ({what}: {joules!r} J); a counter that does not advance is not a "
            "measurement of 0 J"
        )

    def _measured_note(self) -> str | None:
        if self.source == "rapl":
            return "Intel RAPL package energy: socket-wide, includes other processes on the CPU"
        if self.source == "nvml-power":
            return "NVML power sampled and integrated (total-energy counter unsupported)"
        return None

    def describe(self) -> str:
        """One phrase naming the chosen source (for the measurement's `method`)."""
        return {
            "nvml": "NVML total GPU energy counter read before and after",
            "nvml-power": f"NVML GPU power sampled every {self.sample_interval_s * 1000:g} ms",
            "rapl": "Intel RAPL package counters read before and after",
            "stated-power": "stated power x wall time",
        }.get(self.source, "no energy source")

    def close(self) -> None:
        if isinstance(self._backend, _Nvml):
            self._backend.close()
