import time

import pytest

from compress.profile.energy import NO_MOVEMENT, EnergyMeter


def _zone(root, name, uj, rng=None):
    z = root / name
    z.mkdir(parents=True)
    (z / "energy_uj").write_text(f"{uj}\n")
    if rng is not None:
        (z / "max_energy_range_uj").write_text(f"{rng}\n")
    return z


def test_rapl_sums_packages_and_handles_wraparound(tmp_path):
    p0 = _zone(tmp_path, "intel-rapl:0", 1_000_000, rng=10_000_000)
    p1 = _zone(tmp_path, "intel-rapl:1", 9_900_000, rng=10_000_000)
    sub = _zone(tmp_path, "intel-rapl:0:0", 0, rng=10_000_000)  # subzone: ignored
    with EnergyMeter("cpu", rapl_root=tmp_path) as m:
        (p0 / "energy_uj").write_text("3000000\n")  # +2 J
        (p1 / "energy_uj").write_text("400000\n")  # wrapped: +0.5 J
        (sub / "energy_uj").write_text("999999\n")
    r = m.result
    assert r.status == "measured" and r.source == "rapl"
    assert r.joules == pytest.approx(2.5)
    assert "package" in r.reason  # says it is socket-wide


class FakeNvml:
    def __init__(self, energy_supported=True, watts=100.0, mj_step=1_500):
        self.energy_supported = energy_supported
        self.watts = watts
        self.mj = 5_000
        self.mj_step = mj_step
        self.shutdown = False

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        self.shutdown = True

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("gpu", i)

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if not self.energy_supported:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        self.mj += self.mj_step  # 1.5 J between reads by default
        return self.mj

    def nvmlDeviceGetPowerUsage(self, h):
        self.power_reads = getattr(self, "power_reads", 0) + 1
        return int(self.watts * 1000)


def test_nvml_total_energy_counter():
    nvml = FakeNvml()
    meter = EnergyMeter("cuda:0", nvml=nvml)
    with meter as m:
        pass
    assert m.result.status == "measured" and m.result.source == "nvml"
    assert m.result.joules == pytest.approx(1.5)
    meter.close()
    assert nvml.shutdown


def test_nvml_falls_back_to_power_sampling():
    nvml = FakeNvml(energy_supported=False)
    meter = EnergyMeter("cuda", nvml=nvml, sample_interval_s=0.005)
    for _ in range(2):  # reusable: one meter is entered once per timed repeat
        nvml.power_reads = 0
        with meter as m:
            time.sleep(0.05)
        r = m.result
        assert r.status == "measured" and r.source == "nvml-power"
        assert r.joules == pytest.approx(100.0 * r.wall_s, rel=0.1)
        assert nvml.power_reads >= 4  # the sampling thread ran (again)


def test_rapl_counter_that_did_not_move_is_unavailable_not_zero(tmp_path):
    _zone(tmp_path, "intel-rapl:0", 1_000_000, rng=10_000_000)
    with EnergyMeter("cpu", rapl_root=tmp_path) as m:
        pass  # the counter is not written: 0 J over the window
    r = m.result
    assert r.status == "unavailable" and r.joules is None and r.source == "rapl"
    assert NO_MOVEMENT in r.reason and NO_MOVEMENT == (
        "the energy counter did not move during the measured window"
    )


@pytest.mark.parametrize("mj_step", [0, -2_000])
def test_nvml_counter_that_did_not_advance_is_unavailable(mj_step):
    nvml = FakeNvml(mj_step=mj_step)
    meter = EnergyMeter("cuda:0", nvml=nvml)
    with meter as m:
        pass
    assert m.result.status == "unavailable" and m.result.joules is None
    assert NO_MOVEMENT in m.result.reason and "NVML" in m.result.reason
    nvml.mj_step = 1_500  # the same meter measures again once the counter moves
    with meter as m:
        pass
    assert m.result.status == "measured" and m.result.joules == pytest.approx(1.5)


def test_nvml_power_reading_zero_is_unavailable():
    nvml = FakeNvml(energy_supported=False, watts=0.0)
    with EnergyMeter("cuda", nvml=nvml, sample_interval_s=0.005) as m:
        time.sleep(0.02)
    assert m.result.status == "unavailable" and m.result.joules is None
    assert NO_MOVEMENT in m.result.reason


def test_stated_power_is_estimated(tmp_path):
    with EnergyMeter("cpu", rapl_root=tmp_path / "none", power_watts=10.0) as m:
        time.sleep(0.02)
    r = m.result
    assert r.status == "estimated" and r.source == "stated-power"
    assert r.joules == pytest.approx(10.0 * r.wall_s)
    assert r.reason.startswith("power_watts x wall time, stated in the recipe")


def test_unavailable_never_zero(tmp_path):
    with EnergyMeter("cpu", rapl_root=tmp_path / "powercap") as m:
        pass
    r = m.result
    assert r.status == "unavailable" and r.joules is None
    assert r.reason == (
        f"no NVML (CPU run), {tmp_path / 'powercap'} absent, no power_watts in the recipe"
    )


def test_cuda_without_nvml_module_is_unavailable():
    class Broken:
        def nvmlInit(self):
            raise RuntimeError("driver not loaded")

    with EnergyMeter("cuda", nvml=Broken()) as m:
        pass
    assert m.result.joules is None
    assert "NVML failed" in m.result.reason and "no power_watts" in m.result.reason


@pytest.mark.gpu
def test_nvml_measures_gpu_energy_for_real_work():
    """On a GPU machine the meter picks NVML and reads a positive, plausible energy."""
    import torch

    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    with EnergyMeter("cuda") as m:
        for _ in range(200):
            a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize()
    r = m.result
    m.close()
    assert m.source in ("nvml", "nvml-power"), m._tried
    assert r.status == "measured"
    assert r.joules > 0
    assert 10 < r.joules / r.wall_s < 1500  # mean watts of one GPU under load
