"""The sweep executors' pure parts: sizes, resources a cluster can never give, addresses."""

from __future__ import annotations

import pytest

from compress.errors import BadInput
from compress.sweep import execute
from compress.sweep.driver import parse_bytes


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4GiB", 4 * 2**30), ("512MiB", 512 * 2**20), ("2G", 2 * 10**9), ("1000", 1000), (None, None)],
)
def test_sizes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["x", "4 parsecs", "-1GiB", "0"])
def test_bad_sizes_name_the_field(text):
    with pytest.raises(BadInput, match="memory"):
        parse_bytes(text)


def test_resources_no_node_has_are_refused_with_the_flag_to_lower():
    cluster = {"CPU": 2.0, "memory": 8 * 2**30}
    execute._check_resources(cluster, execute.Resources(cpus=2))
    with pytest.raises(BadInput, match="--cpus-per-trial"):
        execute._check_resources(cluster, execute.Resources(cpus=3))
    with pytest.raises(BadInput, match="--gpus-per-trial"):
        execute._check_resources(cluster, execute.Resources(cpus=1, gpus=1))
    with pytest.raises(BadInput, match="16.0 GiB memory"):
        execute._check_resources(cluster, execute.Resources(cpus=1, memory=16 * 2**30))


def test_ray_resources_declare_cpu_gpu_and_memory_only_when_given():
    assert execute.Resources(cpus=2).as_ray() == {"cpu": 2, "gpu": 0}
    assert execute.Resources(cpus=1, gpus=1, memory=2**30).as_ray()["memory"] == 2**30


@pytest.mark.parametrize("address", ["nonsense", "host:port", "ray://:10001"])
def test_malformed_addresses(address):
    with pytest.raises(BadInput, match="expected host:port"):
        execute._check_address(address)


def test_local_addresses_need_no_check():
    for address in (None, "auto", "local"):
        execute._check_address(address)


def test_default_trial_takes_a_whole_node():
    res = execute.default_resources(None, 0, None)
    assert res.cpus == execute.node_cpus() and res.gpus == 0 and res.memory is None


@pytest.mark.parametrize(
    ("codes", "worst"),
    [([0, 3, 1], 1), ([0, 3], 3), ([1, 2, 3], 2), ([2, 4, 0], 4), ([0, 0], 0), ([], 0)],
)
def test_the_sweeps_exit_code_is_the_worst_trials(codes, worst):
    from compress.sweep.driver import worst_exit

    assert worst_exit(codes) == worst
