"""What a careless or unlucky user does: full disks, read-only folders, files from elsewhere."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from world.video import VideoError, write_mp4


def _frames(n: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(n)]


def _fake_writer(fail_at: int | None, body: bytes = b"x" * 64):
    """Stands in for imageio_ffmpeg.write_frames: writes ``body`` per frame and raises ENOSPC at
    frame ``fail_at`` (a full disk), or finishes with a file that has no mp4 index."""
    def write_frames(path, size, **kw):
        with open(path, "wb") as f:
            n = 0
            while True:
                frame = yield
                if frame is None:
                    continue
                n += 1
                f.write(body)
                if fail_at is not None and n == fail_at:
                    raise OSError(errno.ENOSPC, "No space left on device")
    return write_frames


def test_mp4_on_a_full_disk_fails_clearly_and_keeps_the_earlier_file(tmp_path, monkeypatch):
    import imageio_ffmpeg

    out = tmp_path / "video.mp4"
    assert write_mp4(out, _frames()) == 6
    good = out.read_bytes()
    assert b"moov" in good
    monkeypatch.setattr(imageio_ffmpeg, "write_frames", _fake_writer(fail_at=3))
    with pytest.raises(VideoError, match="No space left on device.*unchanged"):
        write_mp4(out, _frames())
    assert out.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video.mp4"]  # no temporary file left


def test_an_unplayable_mp4_is_not_reported_as_written(tmp_path, monkeypatch):
    import imageio_ffmpeg

    monkeypatch.setattr(imageio_ffmpeg, "write_frames", _fake_writer(fail_at=None))
    out = tmp_path / "new.mp4"
    with pytest.raises(VideoError, match="unplayable"):
        write_mp4(out, _frames())
    assert not out.exists() and not list(tmp_path.iterdir())


def test_record_export_on_a_full_disk_exits_nonzero_with_one_line(tmp_path, monkeypatch, capsys):
    import imageio_ffmpeg

    from tests.trainer_helpers import record_tiny_dataset
    from world.record import main as record_main

    data = record_tiny_dataset(tmp_path / "tiny-v0", episodes=1, steps=8)
    monkeypatch.setattr(imageio_ffmpeg, "write_frames", _fake_writer(fail_at=2))
    code = record_main(["export", "--dataset", str(data), "--episode", "0", "--out", str(tmp_path / "ep.mp4")])
    err = capsys.readouterr().err
    assert code != 0 and "No space left on device" in err and "Traceback" not in err
    assert not (tmp_path / "ep.mp4").exists()


def test_a_checkpoint_on_a_full_disk_says_so_and_keeps_the_earlier_ones(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    import torch

    import trainer.checkpoint as C

    run = tmp_path / "run"
    C.save_checkpoint(run, 1, {"model": {"w": torch.zeros(3)}}, {"step": 1}, {"config": {}})

    def full(*a, **k):  # what torch/safetensors report when the disk fills mid-write
        raise RuntimeError("basic_ios::clear: iostream error")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(C, "save_file", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(1 << 30, 1 << 30, 0))
    with pytest.raises(C.CheckpointError, match="No space left on device.*resumes from step_00000001"):
        C.save_checkpoint(run, 2, {"model": {"w": torch.ones(3)}}, {"step": 2}, {"config": {}})
    assert C.latest_checkpoint(run).name == "step_00000001"
    assert not list((run / "checkpoints").glob(".tmp_step_*"))  # the half-written one is gone


def _copy_shipped(tmp_path, name: str):
    import shutil

    from tests.trainer_helpers import ROOT

    for ext in (".safetensors", ".yaml"):
        shutil.copy(ROOT / "assets" / "checkpoints" / f"{name}{ext}", tmp_path / f"{name}{ext}")
    return tmp_path / f"{name}.safetensors"


def test_flipped_bytes_in_the_weights_are_refused(tmp_path):
    from trainer.checkpoint import CheckpointError, resolve_full

    w = _copy_shipped(tmp_path, "adventure_heads")
    resolve_full(w)  # intact: loads
    data = bytearray(w.read_bytes())
    data[-100] ^= 0xFF  # the tensor payload, the header untouched
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        resolve_full(w)


def test_every_shipped_card_records_the_hash_of_its_weights():
    from tests.trainer_helpers import ROOT
    from trainer.checkpoint import check_content, read_card

    for w in sorted((ROOT / "assets" / "checkpoints").glob("*.safetensors")):
        card = read_card(w)
        assert len(card.get("sha256", "")) == 64, w
        check_content(w, card)


@pytest.mark.parametrize("problem", ["yaml", "heads", "garbage"])
def test_play_names_a_bad_checkpoint_in_one_line(tmp_path, problem):
    import subprocess
    import sys

    from tests.trainer_helpers import ROOT

    if problem == "heads":  # a model of the wrong kind
        ckpt = _copy_shipped(tmp_path, "adventure_heads")
        want = "'heads' checkpoint, not a world model"
    else:
        ckpt = _copy_shipped(tmp_path, "adventure_cfpp_frame2")
        if problem == "yaml":
            ckpt.with_suffix(".yaml").write_text("config: [\n  broken")
            want = "not valid YAML at line 2"
        else:
            ckpt.write_bytes(b"garbage")
            want = "does not match the sha256"
    r = subprocess.run([sys.executable, "play.py", "--headless", "--checkpoint", str(ckpt), "--frames", "2",
                        "--out", str(tmp_path / "x.mp4")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "SDL_VIDEODRIVER": "dummy"})
    assert r.returncode == 2, r.stderr[-1500:]
    assert "Traceback" not in r.stderr and want in r.stderr, r.stderr[-1500:]
    assert r.stderr.count("\n") == 1


# ---------------------------------------------------------------- small items: one clear error each
def test_empty_config_and_a_config_of_another_stage_are_named(tmp_path):
    from tests.trainer_helpers import ROOT
    from trainer.config import ConfigError, load_config
    from trainer.stages.teacher import TeacherExperiment

    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        load_config(TeacherExperiment, empty)
    with pytest.raises(ConfigError, match="is a 'autoencoder' config, not a 'teacher' one"):
        load_config(TeacherExperiment, ROOT / "assets" / "configs" / "adventure_ae.yaml")


def test_a_model_card_given_as_the_checkpoint_means_its_weights(tmp_path):
    from trainer.checkpoint import CheckpointError, resolve_full

    w = _copy_shipped(tmp_path, "adventure_heads")
    assert resolve_full(w.with_suffix(".yaml"))[0] == w
    w.unlink()
    with pytest.raises(CheckpointError, match="model card without its weights"):
        resolve_full(w.with_suffix(".yaml"))


def test_evaluate_rejects_empty_runs_and_defaults_to_the_cards_sampler(capsys):
    from evaluation.cli import main
    from model.rollout import SamplerConfig

    card_sampler = SamplerConfig.from_card

    for flag in ("--episodes", "--horizon"):
        assert main(["--checkpoint", "x", "--out", "/tmp/never.json", flag, "0"]) == 2
        assert f"{flag} must be >= 1, got 0" in capsys.readouterr().err
    student = {"sampler": {"kind": "consistency", "steps": 2, "first_frame_steps": 4, "cfg": 1.5}, "loss": {"shift": 3}}
    s = card_sampler(student)
    assert (s.kind, s.steps, s.first_frame_steps, s.cfg, s.shift) == ("consistency", 2, 4, 1.5, 3.0)
    t = card_sampler(student, kind="euler")  # another kind: not the student's guidance or steps
    assert (t.kind, t.steps, t.cfg, t.first_frame_steps) == ("euler", 48, 1.0, 0)
    assert card_sampler({}).kind == "euler"
    # the dream's rule is the same one: an override of the kind does not take the card's steps
    assert card_sampler(student, "euler", default_steps=8).steps == 8


def test_evaluate_table_names_the_horizon_it_averaged():
    from evaluation.report import render_markdown

    rep = {k: 1.0 for k in ("psnr_mean_16", "copy_last_psnr_mean_16", "ae_ceiling_psnr", "ssim_mean_16",
                            "changed_psnr_mean_16", "copy_last_changed_psnr_mean_16", "seen_psnr_mean_16",
                            "copy_last_seen_psnr_mean_16", "player_found_16", "player_pos_err_16",
                            "sharpness_ratio_16", "ae_sharpness_ratio", "action_accuracy", "idm_real_accuracy",
                            "gap_closed_1", "frechet_early", "frechet_late", "revisit_psnr", "copy_last_revisit_psnr")}
    rep.update(psnr_at=[1.0] * 4, sampler={"kind": "euler", "steps": 4, "cfg": 1.0, "shift": 3.0},
               protocol={"episodes": 1, "world": "adventure", "context": 4, "horizon": 4, "eval_seeds": [1]},
               provenance={"checkpoint": "c", "command": "x", "git_commit": "g"})
    md = render_markdown(rep)
    assert "PSNR mean 1-4" in md and "1-16" not in md


def test_play_rejects_a_bad_script_key_headless_too(tmp_path):
    from window.app import parse_args
    from window.input import PlayError

    with pytest.raises(PlayError, match="unknown key name 'jump'"):
        parse_args(["--headless", "--script-keys", "jump*3"])


def test_export_names_stay_in_the_out_dir_and_are_not_overwritten(tmp_path):
    from trainer.checkpoint import CheckpointError
    from trainer.export import export

    with pytest.raises(CheckpointError, match="plain file name"):
        export(tmp_path / "run", "../../x", out_dir=tmp_path / "ship")
    (tmp_path / "ship").mkdir()
    (tmp_path / "ship" / "mine.safetensors").write_bytes(b"keep")
    with pytest.raises(CheckpointError, match="already exist; pass --force"):
        export(tmp_path / "run", "mine", out_dir=tmp_path / "ship")
    assert (tmp_path / "ship" / "mine.safetensors").read_bytes() == b"keep"


def test_env_settings_of_the_wrong_type_and_foreign_states_are_clear():
    import gymnasium as gym

    import agent_env  # noqa: F401 - registers the envs
    from world import make_world
    from world.core import InvalidSettingError, InvalidStateError

    with pytest.raises(InvalidSettingError, match="setting 'steps' of world 'dream' must be int, got str 'two'"):
        gym.make("dreamstep/AdventureDream-v0", steps="two")
    w = make_world("adventure")
    w.reset(seed=0)
    with pytest.raises(InvalidStateError, match="has no 'map_seed'"):
        w.set_state({})
    with pytest.raises(ValueError, match="needs the world to play"):
        gym.make("dreamstep/World-v0")


def test_pipeline_checks_every_stages_options_before_the_first_stage(tmp_path):
    from trainer.pipeline import main

    out = tmp_path / "pipe"
    assert main(["--world", "adventure", "--out", str(out), "--set", "teacher.train.stepz=3"]) == 2
    assert not out.exists()  # nothing was recorded or trained first


def test_a_fresh_recording_gives_its_environment_back(tmp_path):
    from minari import MinariDataset

    from tests.trainer_helpers import record_tiny_dataset

    data = record_tiny_dataset(tmp_path / "rec-v0", episodes=2, steps=10, seed=5)
    ds = MinariDataset(str(data / "data"))
    env = ds.recover_environment()
    assert env.spec.id == "dreamstep/Adventure-v0"
    ep = next(iter(ds.iterate_episodes([1])))
    obs, _ = env.reset(options={"world_seed": 6})  # episode i was recorded from seed + i
    assert np.array_equal(obs, ep.observations[0])
    for t in range(3):  # the same game: the recorded actions give the recorded frames
        obs, *_ = env.step(int(ep.actions[t]))
        assert np.array_equal(obs, ep.observations[t + 1])
    assert set(ds.storage.metadata["author"]) == {"dreamstep world.record"}
    env.close()


def test_an_unwritable_output_is_one_line_before_any_work(tmp_path):
    """A file where the output folder should be (what a read-only folder does for a non-root user):
    every command names the path and stops before it plays, records, exports or evaluates."""
    import os
    import subprocess
    import sys

    from tests.trainer_helpers import ROOT

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy"}
    commands = {
        "play": ["play.py", "--headless", "--frames", "2", "--out", str(blocker / "x.mp4")],
        "play --trace": ["play.py", "--headless", "--frames", "2", "--out", str(tmp_path / "ok.mp4"),
                         "--trace", str(blocker / "t.jsonl")],
        "record": ["-m", "world.record", "--world", "adventure", "--episodes", "1", "--steps", "4",
                   "--out", str(blocker / "tiny-v0")],
        "record export": ["-m", "world.record", "export", "--dataset", str(tmp_path), "--episode", "0",
                          "--out", str(blocker / "e.mp4")],
        "trainer.export": ["-m", "trainer.export", "--run", str(tmp_path), "--name", "x", "--out-dir", str(blocker)],
        "trainer.evaluate": ["-m", "trainer.evaluate", "--checkpoint", "assets/checkpoints/adventure_cfpp_frame2.safetensors",
                             "--out", str(blocker / "r.json")],
    }
    for name, args in commands.items():
        r = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, (name, r.stderr[-1500:])
        assert "Traceback" not in r.stderr and "cannot write" in r.stderr and "not-a-folder" in r.stderr, \
            (name, r.stderr[-1500:])
    assert not (tmp_path / "ok.mp4").exists()


def test_one_path_rule_from_any_folder(tmp_path):
    """Command-line paths are relative to the current folder; paths in configs, --set and model cards
    to the repository (shipped files are found from anywhere)."""
    import os
    import shutil
    import subprocess
    import sys

    from tests.trainer_helpers import ROOT

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "DREAMSTEP_NO_BAR": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "play.py"), "--headless", "--frames", "2", "--checkpoint",
                        "assets/checkpoints/adventure_cfpp_frame2.safetensors", "--out", "video.mp4"],
                       cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-1500:]
    assert (elsewhere / "video.mp4").stat().st_size > 0  # --out: relative to the current folder
    shutil.copy(ROOT / "assets" / "configs" / "adventure_teacher.yaml", elsewhere / "mine.yaml")
    t = subprocess.run([sys.executable, "-m", "trainer", "teacher", "--config", "mine.yaml",
                        "--set", f"run_dir={tmp_path / 'run'}", "--set", "data.dataset=data/datasets/none-v0"],
                       cwd=elsewhere, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                       timeout=300)
    assert t.returncode == 2 and "none-v0" in t.stderr, t.stderr[-1500:]
    assert str(ROOT / "data" / "datasets" / "none-v0") in t.stderr  # a config path: under the repository
    assert sorted(p.name for p in elsewhere.iterdir()) == ["mine.yaml", "video.mp4"]  # no ./runs, ./data


def test_a_path_object_is_a_fine_string_setting():
    from pathlib import Path

    from tests.trainer_helpers import ROOT
    from world import make_world

    w = make_world("dream", checkpoint=Path(ROOT / "assets" / "checkpoints" / "adventure_cfpp_frame2.safetensors"),
                   warmup=False)
    assert isinstance(w.settings.checkpoint, str)


def test_a_failing_frame_source_is_not_called_a_video_error(tmp_path):
    """Only the writer's and the disk's failures become VideoError; the caller's own error (a world or
    model bug while producing frames) keeps its type and traceback."""
    def frames():
        yield from _frames(2)
        raise RuntimeError("a bug in the world")

    with pytest.raises(RuntimeError, match="a bug in the world"):
        write_mp4(tmp_path / "v.mp4", frames())
    assert not list(tmp_path.iterdir())


def test_numpy_numbers_are_fine_settings():
    from world import make_world

    w = make_world("adventure", resolution=np.int64(64), creatures_per_room=np.float32(0.5))
    assert w.settings.resolution == 64 and isinstance(w.settings.resolution, int)
    w.close()
