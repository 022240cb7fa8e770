import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kpod import pipeline
from kpod.config import load_config
from kpod.decoding import greedy_continuations
from kpod.files import DataError
from kpod.models import load_student

ROOT = Path(__file__).resolve().parents[2]


def _cfg(run, model, **extra):
    overrides = {
        "dataset": "gsm8k",
        "output_dir": str(run),
        "student.model": str(model),
        "method": "std-cot",
        "teacher.kind": "reference",
        "data.max_train_questions": 12,
        "data.max_eval_questions": 4,
        "train.epochs": 3,
        "train.learning_rate": 3e-3,
        "train.eval_every": 0,
        "train.trainer_args.logging_steps": 1,
        "student.lora": False,
        "student.max_input_tokens": 256,
        "student.max_target_tokens": 256,
        "eval.max_new_tokens": 12,
        "train.trainer_args.lr_scheduler_type": "constant",
    }
    overrides.update(extra)
    return load_config(overrides=overrides)


@pytest.mark.parametrize("fixture", ["tiny_t5", "tiny_llama"])
def test_training_lowers_the_loss_and_saved_model_predicts_the_same(request, tmp_path, fixture):
    model_dir = request.getfixturevalue(fixture)
    cfg = _cfg(tmp_path / "run", model_dir)
    pipeline.generate(cfg)
    pipeline.train(cfg)
    summary = json.loads((tmp_path / "run" / "train" / "summary.json").read_text())
    losses = [h["loss"] for h in summary["loss_history"]]
    assert len(losses) == 9 and sum(losses[-3:]) < sum(losses[:3])
    assert summary["truncated_targets"] == 0
    reloaded, tokenizer = load_student(str(tmp_path / "run" / "student"))
    fresh, _ = load_student(str(model_dir))
    prompts = ["Q: What is 2 + 3? A: Let's think step by step.", "Q: Tom has 4 apples. A: Let's think step by step."]
    assert greedy_continuations(reloaded, tokenizer, prompts, 8, progress=False) == greedy_continuations(
        reloaded, tokenizer, prompts, 8, progress=False
    )
    trained_state = reloaded.state_dict()
    assert any(not torch.equal(v, fresh.state_dict()[k]) for k, v in trained_state.items())


def test_lora_adapter_round_trip_and_wrong_base(tmp_path, tiny_llama, tiny_t5, data_dir):
    cfg = _cfg(tmp_path / "run", tiny_llama, **{"student.lora": True, "student.lora_r": 4, "train.epochs": 1})
    pipeline.generate(cfg)
    pipeline.train(cfg)
    student = tmp_path / "run" / "student"
    assert (student / "adapter_config.json").is_file() and (student / "kpod_student.json").is_file()
    model, tokenizer = load_student(str(student))
    assert hasattr(model, "peft_config")
    metrics = pipeline.evaluate(cfg, model_path=str(student))
    assert metrics["total"] == 4
    with pytest.raises(ValueError, match="adapter was trained on"):
        load_student(str(tiny_t5), adapter=student)
    # another model under the same folder name (same architecture, other weights) is refused by content
    from kpod.testing import build_tiny_model

    impostor = build_tiny_model(
        "llama", data_dir / "tokenizers" / "llama", tmp_path / "other" / Path(tiny_llama).name, seed=1
    )
    info = json.loads((student / "kpod_student.json").read_text())
    (student / "kpod_student.json").write_text(json.dumps({**info, "base_model": str(impostor)}))
    with pytest.raises(ValueError, match="trained on another model.*same architecture, different weights"):
        load_student(str(student))


def test_switching_from_lora_to_full_leaves_no_adapter_behind(tmp_path, tiny_t5):
    """The student folder is replaced whole: after a full fine-tuning run in a folder that held a LoRA
    student, no adapter file is left for evaluation to apply on top of the new model."""
    lora = _cfg(tmp_path / "run", tiny_t5, **{"student.lora": True, "student.lora_r": 4, "train.epochs": 1})
    pipeline.generate(lora)
    pipeline.train(lora)
    assert (tmp_path / "run/student/adapter_config.json").is_file()
    pipeline.train(_cfg(tmp_path / "run", tiny_t5, **{"train.epochs": 1}))
    names = {f.name for f in (tmp_path / "run/student").iterdir()}
    assert not any(n.startswith("adapter_") for n in names) and "model.safetensors" in names
    model, _ = load_student(str(tmp_path / "run/student"))
    assert not hasattr(model, "peft_config")


def test_resume_continues_the_same_run(tmp_path, tiny_t5):
    whole = _cfg(tmp_path / "whole", tiny_t5, **{"train.epochs": 2})
    pipeline.generate(whole)
    pipeline.train(whole)
    part = _cfg(
        tmp_path / "part", tiny_t5, **{"train.epochs": 2, "train.trainer_args.max_steps": 3}
    )  # 12 questions / 4 = 3 steps an epoch
    pipeline.generate(part)
    pipeline.train(part)
    assert (tmp_path / "part" / "checkpoints" / "checkpoint-3").is_dir()
    resumed = pipeline.train(_cfg(tmp_path / "part", tiny_t5, **{"train.epochs": 2}))
    assert resumed["resumed"] and resumed["steps"] == 6
    a, _ = load_student(str(tmp_path / "whole" / "student"))
    b, _ = load_student(str(tmp_path / "part" / "student"))
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-6), name


@pytest.mark.parametrize("damage", ["truncate_weights", "truncate_optimizer", "remove_state"])
def test_resume_skips_a_checkpoint_left_half_written(tmp_path, tiny_t5, damage, caplog):
    """A crash while checkpoint-6 was written: the run resumes from checkpoint-3, says why, and ends
    where an uninterrupted run ends."""
    from kpod.student.recipe import latest_complete_checkpoint

    cfg = _cfg(tmp_path / "run", tiny_t5, **{"train.epochs": 2, "train.trainer_args.save_total_limit": 3})
    pipeline.generate(cfg)
    pipeline.train(cfg)
    last = tmp_path / "run" / "checkpoints" / "checkpoint-6"
    target = {
        "truncate_weights": "model.safetensors",
        "truncate_optimizer": "optimizer.pt",
        "remove_state": "trainer_state.json",
    }[damage]
    path = last / target
    if damage == "remove_state":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert latest_complete_checkpoint(tmp_path / "run" / "checkpoints").name == "checkpoint-3"
    resumed = pipeline.train(
        _cfg(tmp_path / "run", tiny_t5, **{"train.epochs": 2, "train.trainer_args.save_total_limit": 3})
    )
    assert resumed["resumed"] and resumed["steps"] == 6
    assert "skipping" in caplog.text and "checkpoint-6" in caplog.text


class SafetensorError(Exception):
    pass


@pytest.mark.parametrize(
    "disk_full",
    [
        OSError(28, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file data/0"),
        SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space" })'),
    ],
    ids=["oserror", "torch", "safetensors"],
)
def test_a_full_disk_while_checkpointing_is_a_clear_error_and_resumable(tmp_path, tiny_t5, monkeypatch, disk_full):
    """The disk fills up while checkpoint-6 is written, whichever library notices: one error naming the
    folder and the space a checkpoint needs, the half-written checkpoint removed, checkpoint-3 intact,
    and a rerun resumes."""

    from transformers import Trainer

    from kpod.student.recipe import DiskFullError

    settings = {"train.epochs": 2, "train.trainer_args.save_total_limit": 3}
    cfg = _cfg(tmp_path / "run", tiny_t5, **settings)
    pipeline.generate(cfg)
    save = Trainer._save_checkpoint

    def save_until_the_disk_is_full(self, model, trial):
        if self.state.global_step >= 6:
            partial = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            partial.mkdir(parents=True)
            (partial / "model.safetensors").write_bytes(b"\x10\x00")
            raise disk_full
        return save(self, model, trial)

    monkeypatch.setattr(Trainer, "_save_checkpoint", save_until_the_disk_is_full)
    with pytest.raises(
        DiskFullError, match=r"disk full while writing a checkpoint in .*checkpoints.*MiB.*checkpoint-3"
    ):
        pipeline.train(cfg)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-3"]
    assert not (tmp_path / "run" / "student").exists()
    monkeypatch.setattr(Trainer, "_save_checkpoint", save)
    resumed = pipeline.train(_cfg(tmp_path / "run", tiny_t5, **settings))
    assert resumed["resumed"] and resumed["steps"] == 6


def test_bad_training_input(tmp_path, tiny_t5):
    cfg = _cfg(tmp_path / "run", tiny_t5)
    with pytest.raises(DataError, match="rationales file not found"):
        pipeline.train(cfg)
    (tmp_path / "run" / "rationales").mkdir(parents=True)
    (tmp_path / "run" / "rationales" / "train.jsonl").write_text("")
    with pytest.raises(DataError, match="no rationales"):
        pipeline.train(cfg)
    row = {"id": "svamp-chal-1", "question": "q", "gold": "1", "rationale": "a.", "steps": ["a."], "correct": True}
    (tmp_path / "run" / "rationales" / "train.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match="match no training question"):
        pipeline.train(cfg)


def test_truncation_is_counted(tmp_path, tiny_t5):
    cfg = _cfg(tmp_path / "run", tiny_t5, **{"student.max_target_tokens": 16, "train.epochs": 1})
    pipeline.generate(cfg)
    summary = pipeline.train(cfg)
    assert summary["truncated_targets"] > 0
    # Std-CoT uses no token weights, so their settings are not its inputs (changing them reruns KPOD only)
    reads = pipeline.read_manifest(cfg.run_dir)["train"]["uses"]
    assert "student.max_target_tokens" in reads
    assert not {"train.weight_floor", "train.weight_norm", "weighting.overlap"} & reads.keys()


LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"],
    "accelerate": [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(Path(__file__).resolve().parents[2] / "configs/accelerate/cpu-ddp.yaml"),
    ],
}


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_process_data_parallel_matches_one_process(tmp_path, tiny_llama, launcher):
    """torchrun --nproc_per_node 2, or accelerate launch with configs/accelerate/cpu-ddp.yaml (gloo), with
    the same global batch follows the one-process loss curve."""
    script = tmp_path / "dp.py"
    script.write_text(
        "import json, sys\nfrom kpod import pipeline\nfrom kpod.config import load_config\n"
        "run, bs = sys.argv[1], int(sys.argv[2])\n"
        f"cfg = load_config(overrides={{'dataset': 'gsm8k', 'output_dir': run, 'student.model': r'{tiny_llama}', "
        "'method': 'std-cot', 'teacher.kind': 'reference', 'data.max_train_questions': 16, 'train.epochs': 2, "
        "'train.learning_rate': 3e-3, 'train.eval_every': 0, 'train.trainer_args.logging_steps': 1, 'student.lora': False, "
        "'train.batch_size': bs, 'train.trainer_args.train_sampling_strategy': 'sequential', 'train.save_checkpoints': False, "
        "'student.max_target_tokens': 256, 'train.trainer_args.lr_scheduler_type': 'constant'})\n"
        "import torch.distributed as dist\n"
        "pipeline.generate(cfg) if not dist.is_available() or int(__import__('os').environ.get('RANK', 0)) == 0 else None\n"
        "pipeline.train(cfg)\n"
        "s = json.loads((__import__('pathlib').Path(run) / 'train' / 'summary.json').read_text())\n"
        # one rank prints: the launcher joins both ranks' stdout, and two prints can share a line
        "if int(__import__('os').environ.get('RANK', 0)) == 0: print('LOSSES', json.dumps([h['loss'] for h in s['loss_history']]))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = tmp_path / "one"
    pipeline.generate(
        load_config(overrides={"output_dir": str(one), "teacher.kind": "reference", "data.max_train_questions": 16})
    )
    two = tmp_path / "two"
    pipeline.generate(
        load_config(overrides={"output_dir": str(two), "teacher.kind": "reference", "data.max_train_questions": 16})
    )
    out1 = subprocess.run(
        [sys.executable, str(script), str(one), "4"], env=env, capture_output=True, text=True, timeout=600
    )
    assert out1.returncode == 0, out1.stderr[-3000:]
    out2 = subprocess.run(
        LAUNCHERS[launcher] + [str(script), str(two), "2"], env=env, capture_output=True, text=True, timeout=600
    )
    assert out2.returncode == 0, out2.stderr[-3000:]

    def curve(out):
        return json.loads(next(row for row in out.stdout.splitlines() if row.startswith("LOSSES"))[7:])

    single, parallel = curve(out1), curve(out2)
    assert len(single) == len(parallel) == 8
    assert single == pytest.approx(parallel, rel=2e-3)


def test_tensorboard_logging(tmp_path, tiny_t5):
    cfg = _cfg(tmp_path / "run", tiny_t5, **{"train.epochs": 1, "report_to": "tensorboard"})
    pipeline.generate(cfg)
    pipeline.train(cfg)
    assert list((tmp_path / "run" / "logs" / "tensorboard").rglob("events.out.tfevents.*"))


def _phased_run(tmp_path, model, **extra):
    """A KPOD run folder with 4 schedule phases over 2 epochs, every pipeline stage before `train` done."""
    cfg = _cfg(
        tmp_path / "run",
        model,
        **{"method": "kpod", "schedule.phases": 4, "train.epochs": 2, "weighting.epochs": 1, **extra},
    )
    for stage in ("generate", "train_token_weighting", "calculate_difficulties", "cluster"):
        pipeline.STAGE_FUNCTIONS[stage](cfg)
    return cfg


def test_schedule_phases_advance_at_step_boundaries(tmp_path, tiny_llama, monkeypatch):
    """schedule.phases=4 over 2 epochs of 3 steps: phases switch every 1.5 steps, at step ends."""
    from kpod.student.data import DistillDataset

    cfg = _phased_run(tmp_path, tiny_llama, **{"train.batch_size": 4, "train.save_checkpoints": False})
    schedule = json.loads((tmp_path / "run" / "schedule/schedule.json").read_text())
    assert schedule["phases"] == 4 and schedule["epochs"] == 2 and len(schedule["table"]) == 4
    assert all(len(c) == 4 for c in schedule["input_steps"].values())
    seen = []
    original = DistillDataset.__getitem__
    monkeypatch.setattr(DistillDataset, "__getitem__", lambda self, key: seen.append(key[1]) or original(self, key))
    pipeline.train(cfg)
    per_step = [seen[i : i + 4] for i in range(0, len(seen), 4)]
    assert [set(s) for s in per_step] == [{0}, {0}, {1}, {2}, {2}, {3}]


def test_the_sampler_gives_each_item_the_stage_of_its_step_also_after_a_resume():
    from kpod.student.trainer import PhasedSampler, phase_at_step

    assert [phase_at_step(s, 10, 4) for s in range(10)] == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    sampler = PhasedSampler(range(8), phases=5, batch_size=2, steps_per_epoch=2, max_steps=10, accumulation=2)
    sampler.set_epoch(3)  # a resume in epoch 3: steps 6 and 7 of 10
    assert [phase for _, phase in sampler] == [3] * 8
    assert sampler.epoch == 4
    two_processes = PhasedSampler(range(16), phases=4, batch_size=2, steps_per_epoch=4, max_steps=4, processes=2)
    assert [phase for _, phase in two_processes] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    per_epoch = PhasedSampler(range(4), phases=None, batch_size=2)
    per_epoch.set_epoch(2)
    assert {phase for _, phase in per_epoch} == {2}


@pytest.mark.parametrize("sampling", ["random", "group_by_length"])
def test_the_stage_reaches_dataloader_workers(tmp_path, tiny_llama, sampling):
    """With worker processes (each holding its own copy of the dataset), every item of every batch is
    encoded at the c its step's phase asks for: identified by its tokens and labels among all encodings.
    Also with length-grouped batches (the GPU default)."""
    from kpod.artifacts import RunPaths
    from kpod.layout import encode_example, source_target_item
    from kpod.student.recipe import build_examples, build_trainer
    from kpod.student.trainer import phase_at_step

    cfg = _phased_run(
        tmp_path,
        tiny_llama,
        **{
            "train.batch_size": 2,
            "train.trainer_args.dataloader_num_workers": 2,
            "train.trainer_args.train_sampling_strategy": sampling,
        },
    )
    paths = RunPaths(cfg.run_dir)
    examples = build_examples(cfg, paths)
    assert any(len(set(e.input_steps)) > 2 for e in examples)
    trainer, _, _ = build_trainer(cfg, paths, examples=examples, splits=None, base_name=str(tiny_llama))
    known = {}
    for index, e in enumerate(examples):
        for c in set(e.input_steps):
            enc = encode_example(e, c, trainer.processing_class, False, 256, 256)
            item = source_target_item(enc.source_ids, enc.target_ids, seq2seq=False)
            known.setdefault((tuple(item["input_ids"]), tuple(item["labels"])), []).append((index, c))
    steps_per_epoch, seen_phases = 6, set()
    for epoch in range(2):
        loader = trainer.get_train_dataloader()
        assert loader.num_workers == 2
        loader.set_epoch(epoch)
        for b, batch in enumerate(loader):
            phase = phase_at_step(epoch * steps_per_epoch + b, 2 * steps_per_epoch, 4)
            seen_phases.add(phase)
            for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
                n = int(mask.sum())
                matches = known[(tuple(ids[:n].tolist()), tuple(labels[:n].tolist()))]
                assert any(c == examples[i].input_steps[phase] for i, c in matches), (epoch, b, matches, phase)
    assert seen_phases == {0, 1, 2, 3}
