"""configs/accelerate/: every file loads with accelerate's own loader and says what it is for; the CPU one
runs in tests/student/test_train.py::test_two_process_data_parallel_matches_one_process."""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

FOLDER = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
EXPECTED = {
    "cpu-ddp.yaml": ("MULTI_GPU", 2, 1),  # with use_cpu: a gloo group of CPU processes
    "ddp-multinode.yaml": ("MULTI_GPU", 16, 2),
    "deepspeed-zero2.yaml": ("DEEPSPEED", 8, 1),
    "deepspeed-zero3.yaml": ("DEEPSPEED", 8, 1),
    "fsdp.yaml": ("FSDP", 8, 1),
}


def test_the_folder_holds_the_documented_files():
    assert sorted(p.name for p in FOLDER.glob("*.yaml")) == sorted(EXPECTED)
    training_doc = (FOLDER.parents[1] / "docs" / "training.md").read_text()
    for name in EXPECTED:
        assert f"configs/accelerate/{name}" in training_doc, f"{name} has no command in docs/training.md"


@pytest.mark.parametrize("name", EXPECTED)
def test_accelerate_loads_each_config(name):
    config = load_config_from_file(str(FOLDER / name))
    kind, processes, machines = EXPECTED[name]
    assert config.distributed_type.value == kind
    assert (config.num_processes, config.num_machines) == (processes, machines)
    if kind == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == int(name[-6])
    if kind == "FSDP":
        assert config.fsdp_config["fsdp_sharding_strategy"] == "FULL_SHARD"
