"""Inputs that cannot hurt: every command refuses bad numbers and unusable output locations before any compute,
with one message naming the flag and the fix, exit code 2, and nothing written or overwritten."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from hetcache.dashboard.cli import main as dashboard_main
from hetcache.profiler.cli import main as profile_main
from hetcache.tuner.cli import main as tune_main
from hetcache.tuner.study_storage import open_storage

from hetcache import policies
from hetcache.atomic import MARKER, atomic_dir, write_marker
from hetcache.cli import main as hetcache_main
from hetcache.cli import run_main
from hetcache.locks import claim_path

SMALL = ["--weights", "random", "--steps", "3", "--clips", "box", "--height", "64", "--width", "64", "--frames", "9"]
ENTRY_POINTS = {
    "hetcache": (hetcache_main, []),
    "hetcache run": (hetcache_main, ["run"]),
    "hetcache policies": (hetcache_main, ["policies"]),
    "hetcache-run": (run_main, []),
    "hetcache-profile": (profile_main, []),
    "hetcache-tune": (tune_main, []),
    "hetcache-tune export": (tune_main, ["export"]),
    "hetcache-tune reference-policies": (tune_main, ["reference-policies"]),
    "hetcache-dashboard": (dashboard_main, []),
}
# the commands that write an output folder, with the flags that make them run on the tiny workload
WRITERS = {
    "run": (hetcache_main, ["run", *SMALL, "--policy", "reference-psnr35", "--compare", "--reps", "1"]),
    "profile": (profile_main, SMALL),
    "tune": (tune_main, ["--budget", "psnr=30", "--trials", "1", *SMALL]),
}


def call(main, *args: str) -> tuple[int, str, str]:
    """Run an entry point in-process; returns exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its content (to prove nothing changed)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- help, version, exit codes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_every_entry_point_has_examples_exit_codes_and_a_version(name):
    main, prefix = ENTRY_POINTS[name]
    code, out, _ = call(main, *prefix, "--help")
    assert code == 0
    examples = out.split("examples:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    command = "hetcache run" if name == "hetcache-run" else name  # hetcache-run shows the `hetcache run` form
    assert examples and all(line.startswith((f"  {command}", "      ")) for line in examples), examples
    assert "exit codes:\n" in out and "  2    bad input" in out and "  0    success" in out
    assert ("  3    no trial met the budget" in out) == name.startswith("hetcache-tune")
    code, out, _ = call(main, *prefix, "--version")
    assert code == 0 and out.startswith("hetcache ")


# -- numbers checked at parse time ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--mask-threshold", "-0.5"], "argument --mask-threshold: must be a number in (0, 1), got -0.5"),
        (["--mask-threshold", "nan"], "argument --mask-threshold: must be a finite number, got 'nan'"),
        (["--mask-threshold", "1.5"], "argument --mask-threshold: must be a number in (0, 1), got 1.5"),
        (["--width", "0"], "argument --width: must be a multiple of 16 pixels ≥ 16, got 0: use 16"),
        (["--height", "70"], "argument --height: must be a multiple of 16 pixels ≥ 16, got 70: use 64 or 80"),
        (["--frames", "10"], "argument --frames: must be 4k+1 (Wan's VAE groups frames by 4), got 10: use 9 or 13"),
        (["--frames", "3"], "argument --frames: must be at least 5 frames (4k+1), got 3"),
        (["--steps", "1"], "argument --steps: must be an integer ≥ 2, got 1"),
        (["--seed", "-1"], "argument --seed: must be an integer ≥ 0, got -1"),
        (["--guidance-scale", "inf"], "argument --guidance-scale: must be a finite number, got 'inf'"),
        (["--reps", "0"], "argument --reps: must be an integer in [1, 100], got 0"),
    ],
)
def test_run_refuses_numbers_outside_their_range(tmp_path, flags, message):
    code, _, err = call(hetcache_main, "run", "--out", str(tmp_path / "out"), *flags)
    assert code == 2 and message in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--budget", "psnr=-1"], "--budget psnr=-1 means nothing: psnr takes values in (0, 100]"),
        (["--budget", "ssim=2"], "--budget ssim=2 means nothing: ssim takes values in (0, 1]"),
        (["--budget", "psnr=30,lpips=-0.1"], "--budget lpips=-0.1 means nothing: lpips takes values in [0, 1]"),
        (["--budget", "psnr=30", "--trials", "0"], "argument --trials: must be an integer ≥ 1, got 0"),
        (["--budget", "psnr=30", "--min-speedup", "0"], "argument --min-speedup: must be a number > 0, got 0"),
        (["--budget", "psnr=30", "--timeout", "nan"], "argument --timeout: must be a finite number, got 'nan'"),
    ],
)
def test_tune_refuses_meaningless_budgets_and_numbers(tmp_path, flags, message):
    code, out, err = call(tune_main, *flags, *SMALL, "--out", str(tmp_path / "tune"))
    assert code == 2 and message in err and out == ""
    assert not (tmp_path / "tune").exists()


def test_dashboard_port_range_is_checked_at_parse_time(capsys):
    assert dashboard_main(["--port", "0"]) == 2
    assert "argument --port: must be an integer in [1, 65535], got 0" in capsys.readouterr().err


# -- output locations checked before any compute ------------------------------------------------------------------


@pytest.mark.parametrize("command", list(WRITERS))
def test_unwritable_outputs_are_refused_before_compute(tmp_path, monkeypatch, command):
    main, args = WRITERS[command]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("a regular file\n")
    cases = [
        (Path("/proc/hetcache-out"), "cannot be written: creating anything in '/proc' fails"),
        (tmp_path / "file" / "out", f"'{tmp_path / 'file'}' is a file, not a folder"),
        (Path("."), "is the working folder or one of its parents"),
        (tmp_path.parent, "is the working folder or one of its parents"),
    ]
    for out, message in cases:
        code, _, err = call(main, *args, "--out", str(out), "--overwrite" if command != "tune" else "--join")
        assert code == 2, (out, err)
        assert f"--out '{out}'" in err and message in err and "Fix:" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        code, _, err = call(hetcache_main, *WRITERS["run"][1], "--out", str(locked / "out"))
    finally:
        locked.chmod(stat.S_IRWXU)
    assert code == 2 and "cannot be written" in err and not list(locked.iterdir())


@pytest.mark.parametrize("command", list(WRITERS))
def test_folders_hetcache_did_not_write_are_never_replaced(tmp_path, command):
    main, args = WRITERS[command]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own work\n")
    before = tree(mine)
    code, _, err = call(main, *args, "--out", str(mine), "--overwrite" if command != "tune" else "--join")
    assert code == 2 and "non-empty folder hetcache did not write" in err and "even with --overwrite" in err
    assert tree(mine) == before


def test_atomic_dir_refuses_an_unmarked_folder_and_marks_what_it_writes(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.bin").write_bytes(b"\x00")
    with pytest.raises(Exception, match="hetcache did not write"), atomic_dir(foreign, "run", overwrite=True):
        pass
    assert tree(foreign) == {"data.bin": b"\x00"}
    with atomic_dir(tmp_path / "mine", "run") as tmp:
        (tmp / "a.txt").write_text("1")
    assert json.loads((tmp_path / "mine" / MARKER).read_text()) | {"tool": ""} == {
        "tool": "",
        "kind": "run",
        "files": ["a.txt"],
    }
    with atomic_dir(tmp_path / "mine", "run", overwrite=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == [MARKER, "b.txt"]
    with pytest.raises(Exception, match="not a profile folder"), atomic_dir(tmp_path / "mine", "profile", True):
        pass
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == [MARKER, "b.txt"]


def _run_folder(folder: Path, *extra: str) -> Path:
    """A run folder as `hetcache run` writes it (marked, its files listed), plus `extra` files a user added."""
    with atomic_dir(folder, "run") as tmp:
        (tmp / "run.json").write_text("{}")
    for name in extra:
        (folder / name).write_text("my own work\n")
    return folder


def _export_case(tmp: Path) -> tuple[list[str], str]:
    (tmp / "notes.txt").write_text("my notes\n")
    store = str(tmp / "study.db")
    args = ["export", "--storage", store, "--study-name", "s", "--export", str(tmp / "notes.txt"), "--overwrite"]
    return args, "--export '{tmp}/notes.txt' is not a policy file"


def _user_file_in_run_case(tmp: Path) -> tuple[list[str], str]:
    _run_folder(tmp / "out", "notes.txt")
    args = [*WRITERS["run"][1], "--out", str(tmp / "out"), "--overwrite"]
    return args, "--out '{tmp}/out' holds 'notes.txt', which hetcache did not write there"


def _profile_over_run_case(tmp: Path) -> tuple[list[str], str]:
    _run_folder(tmp / "out")
    args = [*WRITERS["profile"][1], "--out", str(tmp / "out"), "--overwrite"]
    return args, "--out '{tmp}/out' is a hetcache run folder, not a profile folder"


def _symlink_case(tmp: Path) -> tuple[list[str], str]:
    (tmp / "link").symlink_to(_run_folder(tmp / "out"))
    args = [*WRITERS["run"][1], "--out", str(tmp / "link"), "--overwrite"]
    return args, "--out '{tmp}/link' is a symbolic link to '{tmp}/out'; hetcache never writes through"


def _dangling_symlink_case(tmp: Path) -> tuple[list[str], str]:
    (tmp / "link").symlink_to(tmp / "gone")
    args = [*WRITERS["profile"][1], "--out", str(tmp / "link")]
    return args, "--out '{tmp}/link' is a symbolic link to '{tmp}/gone', which does not exist"


def _older_run_folder_case(tmp: Path) -> tuple[list[str], str]:
    (tmp / "out").mkdir()
    write_marker(tmp / "out", "run")  # as hetcache wrote it before markers listed their files
    (tmp / "out" / "notes.txt").write_text("my own work\n")
    args = [*WRITERS["run"][1], "--out", str(tmp / "out"), "--overwrite"]
    return args, "--out '{tmp}/out' was written by an older hetcache that did not list its files"


def _symlink_export_case(tmp: Path) -> tuple[list[str], str]:
    (tmp / "mine.json").write_text("{}")
    (tmp / "link.json").symlink_to(tmp / "mine.json")
    store = str(tmp / "study.db")
    args = ["export", "--storage", store, "--study-name", "s", "--export", str(tmp / "link.json"), "--overwrite"]
    return args, "--export '{tmp}/link.json' is a symbolic link"


# what --overwrite must never replace: (entry point, case builder → (flags, message with {tmp}))
OVERWRITE_CASES = {
    "export over a user's text file": (tune_main, _export_case),
    "run over a run folder holding a user's file": (hetcache_main, _user_file_in_run_case),
    "profile over a run folder": (profile_main, _profile_over_run_case),
    "run through a symlink": (hetcache_main, _symlink_case),
    "profile into a dangling symlink": (profile_main, _dangling_symlink_case),
    "export through a symlink": (tune_main, _symlink_export_case),
    "run over an older run folder": (hetcache_main, _older_run_folder_case),
}


@pytest.mark.parametrize("case", list(OVERWRITE_CASES))
def test_overwrite_replaces_only_what_the_same_command_wrote(tmp_path, case):
    main, build = OVERWRITE_CASES[case]
    args, message = build(tmp_path)
    links = {p.name: os.readlink(p) for p in tmp_path.iterdir() if p.is_symlink()}
    before = tree(tmp_path)
    code, out, err = call(main, *args)
    assert code == 2 and message.format(tmp=tmp_path) in err, err
    assert len(err.strip().splitlines()) == 1 and "Fix:" in err and out == ""
    assert tree(tmp_path) == before
    assert {p.name: os.readlink(p) for p in tmp_path.iterdir() if p.is_symlink()} == links


# -- pre-flight: devices, input files, clip lists, plans and flag pairs, refused before any model is built ---------


def _write_embeds(tmp: Path, kind: str) -> Path:
    """A prompt-embeddings file that must be refused: 'nan' (a torch file holding NaN), 'junk' (neither format)."""
    import torch

    path = tmp / f"{kind}.safetensors"
    if kind == "nan":
        torch.save({"prompt_embeds": torch.full((1, 4, 8), float("nan"))}, path)
    else:
        path.write_text("not a tensor file\n")
    return path


def _plan_policy(tmp: Path, plan: str) -> Path:
    """A policy file whose explicit step plan is `plan`, tuned for no particular step count (no workload section),
    for a run of SMALL's 3 steps."""
    data = json.loads(policies.policy_path("reference-psnr35").read_text())
    data["step_plan"] = {**data["step_plan"], "rule": "explicit", "plan": plan}
    data["workload"]["steps"] = len(plan)  # the policy's own workload agrees: the run's --steps is what differs
    data.pop("workload")
    path = tmp / "plan.json"
    path.write_text(json.dumps(data))
    return path


def _policy_file(tmp: Path, change) -> str:
    """The shipped reference-psnr35 policy (20 steps) after `change(data)` edits its JSON form."""
    data = json.loads(policies.policy_path("reference-psnr35").read_text())
    change(data)
    path = tmp / "edited.json"
    path.write_text(json.dumps(data))
    return str(path)


def _workload_file(tmp: Path, **changes) -> Path:
    """The reference workload file with `changes` (raw JSON values, NaN included)."""
    from hetcache.workloads.spec import reference_workload

    data = {**reference_workload().to_dict(), **changes}
    path = tmp / "workload.json"
    path.write_text(json.dumps(data))
    return path


def _png(width: int, height: int) -> bytes:
    """A valid black RGB PNG of this size, written without an image library (one deflate of the zero rows)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(bytes((1 + 3 * width) * height), 9)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _frames(tmp: Path, name: str, count: int, size: int = 32, corrupt: int | None = None) -> Path:
    """A folder of `count` black PNG frames of `size` x `size` (hard links of one file); frame `corrupt` cut short."""
    folder = tmp / name
    folder.mkdir(exist_ok=True)
    first = folder / "f000.png"
    first.write_bytes(_png(size, size))
    for i in range(1, count):
        os.link(first, folder / f"f{i:03d}.png")
    if corrupt is not None:
        broken = folder / f"f{corrupt:03d}.png"
        broken.unlink()
        broken.write_bytes(first.read_bytes()[:-20])  # IEND and the IDAT checksum lost
    return folder


def _clip_files(tmp: Path, count: int, size: int = 32, corrupt: int | None = None) -> list[str]:
    """--video/--mask flags for a clip of frame folders (black video, empty mask)."""
    video = _frames(tmp, "video", count, size, corrupt)
    return ["--video", str(video), "--mask", str(_frames(tmp, "mask", count, size))]


def _run(*flags: str) -> list[str]:
    """`hetcache run` on SMALL with `flags` replacing SMALL's own where they name the same flag."""
    small = dict(zip(SMALL[::2], SMALL[1::2], strict=True))
    given = dict(zip(flags[::2], flags[1::2], strict=False)) if len(flags) % 2 == 0 else {}
    return ["run", *(x for k, v in small.items() if k not in given for x in (k, v)), *flags]


# (entry point, flags built from tmp, message) — every one refused with exit 2 and one line before compute
PREFLIGHT_CASES = {
    "unknown device": (hetcache_main, lambda t: _run("--device", "banana"), "--device 'banana' is not a device name"),
    "absent device": (hetcache_main, lambda t: _run("--device", "cuda:99"), "--device 'cuda:99' is not available"),
    "profile: absent device": (profile_main, lambda t: [*SMALL, "--device", "cuda:99"], "is not available"),
    "embeds in neither format": (
        hetcache_main,
        lambda t: _run("--prompt-embeds", str(_write_embeds(t, "junk"))),
        "are neither a safetensors nor a torch file",
    ),
    "NaN embeds": (
        hetcache_main,
        lambda t: _run("--prompt-embeds", str(_write_embeds(t, "nan"))),
        "prompt_embeds holds NaN or infinite values",
    ),
    "workload: absent device": (
        hetcache_main,
        lambda t: ["run", "--workload", str(_workload_file(t, device="cuda:99"))],
        "--device 'cuda:99' is not available",
    ),
    "tune: NaN embeds": (
        tune_main,
        lambda t: ["--budget", "psnr=30", *SMALL, "--prompt-embeds", str(_write_embeds(t, "nan"))],
        "prompt_embeds holds NaN or infinite values",
    ),
    "size no memory holds": (
        hetcache_main,
        lambda t: _run("--height", "100000", "--width", "100000"),
        "--height 100000 --width 100000 --frames 9 needs at least",
    ),
    "tune: size no memory holds": (
        tune_main,
        lambda t: ["--budget", "psnr=30", *SMALL[:6], "--height", "100000", "--width", "100000"],
        "available. Fix: use at most --height",
    ),
    "plan-memory: 100001 frames": (
        hetcache_main,
        lambda t: ["plan-memory", "--frames", "100001"],
        "--height 480 --width 832 --frames 100001 needs at least",
    ),
    "plan-memory: 100000x100000": (
        hetcache_main,
        lambda t: ["plan-memory", "--height", "100000", "--width", "100000"],
        "on the GPU before any cache (the weights and one step's activations), over --gpu-gib 80. Fix: use at most",
    ),
    "plan-memory: a plan the host cannot compute": (
        hetcache_main,
        lambda t: ["plan-memory", "--height", "400000", "--width", "400000", "--gpu-gib", "1e12"],
        "of host memory to compute its plan (its token masks), but",
    ),
    "file clip: frames no memory decodes": (
        hetcache_main,
        lambda t: ["run", *SMALL[:4], *_clip_files(t, 200, 8192)],
        "(200 frames of 8192x8192) takes at least 225.0 GiB to decode with its mask",
    ),
    "file clip: a size no memory holds": (
        hetcache_main,
        lambda t: ["run", *SMALL[:4], *_clip_files(t, 9), "--height", "100000", "--width", "100000"],
        "clip 'video' at 100000x100000, 9 frames, needs at least",
    ),
    "file clip: a corrupt PNG": (
        hetcache_main,
        lambda t: ["run", *SMALL[:4], *_clip_files(t, 9, corrupt=3)],
        "f003.png' cannot be read as an image",
    ),
    "file clip: fewer frames than the least": (
        hetcache_main,
        lambda t: ["run", *SMALL[:4], *_clip_files(t, 3), "--frames", "5"],
        "has 3 frames; the pipeline needs at least 5 (4k+1). Fix: pass a clip of at least 5 frames",
    ),
    "file clip: more --frames than it has": (
        hetcache_main,
        lambda t: ["run", *SMALL[:4], *_clip_files(t, 7), "--frames", "9"],
        "has 7 frames but 9 were asked for. Fix: ask for at most 5 frames (4k+1), or drop --frames",
    ),
    "policy: warmup beyond its workload's steps": (
        hetcache_main,
        lambda t: ["policies", "validate", _policy_file(t, lambda d: d["step_plan"].update(warmup_steps=1000))],
        "step_plan has warmup_steps 1000 but workload.steps is 20",
    ),
    "policy: warmup beyond any step count": (
        hetcache_main,
        lambda t: [
            "policies",
            "validate",
            _policy_file(t, lambda d: (d.pop("workload"), d["step_plan"].update(warmup_steps=5000, plan=None))),
        ],
        "step_plan.warmup_steps must be ≤ 1000, got 5000",
    ),
    "policy: empty name": (
        hetcache_main,
        lambda t: ["policies", "validate", _policy_file(t, lambda d: d.update(name=" "))],
        "name must be a non-empty string, got ' '",
    ),
    "policy: absurd polynomial": (
        hetcache_main,
        lambda t: [
            "policies",
            "validate",
            _policy_file(t, lambda d: d["step_plan"]["polynomial"].__setitem__(0, 1e308)),
        ],
        "step_plan.polynomial must hold numbers from -1e+09 to 1e+09, got 1e+308",
    ),
    "policy: an edited architecture": (
        hetcache_main,
        lambda t: ["policies", "validate", _policy_file(t, lambda d: d["model"]["architecture"].update(num_layers=8))],
        "model.architecture does not match model.fingerprint sha256:",
    ),
    "run: a policy with an edited architecture": (
        hetcache_main,
        lambda t: _run("--policy", _policy_file(t, lambda d: d["model"]["architecture"].update(num_layers=8))),
        "model.architecture does not match model.fingerprint sha256:",
    ),
    "empty --clips": (hetcache_main, lambda t: _run("--clips", ""), "--clips '' names no clip"),
    "profile: duplicate --clips": (profile_main, lambda t: [*SMALL[:4], "--clips", "box,box"], "'box' more than once"),
    "duplicate --clips": (hetcache_main, lambda t: _run("--clips", "box,box"), "names clip 'box' more than once"),
    "--video/--mask with --clips": (
        hetcache_main,
        lambda t: _run("--video", str(t / "v.mp4"), "--mask", str(t / "m.mp4")),
        "--video/--mask and --clips 'box' both name the clips",
    ),
    "workload: NaN guidance_scale": (
        hetcache_main,
        lambda t: ["run", "--workload", str(_workload_file(t, guidance_scale=float("nan")))],
        "guidance_scale must be a finite number",
    ),
    "workload: empty clips": (
        hetcache_main,
        lambda t: ["run", "--workload", str(_workload_file(t, clips=[]))],
        "clips must be a non-empty list of clips, got []. Fix: leave 'clips' out for the reference calibration",
    ),
    "workload: duplicate clips": (
        hetcache_main,
        lambda t: ["run", "--workload", str(_workload_file(t, clips=[{"name": "a", "kind": "box"}] * 2))],
        "names clip 'a' more than once",
    ),
    "plan too long": (
        hetcache_main,
        lambda t: _run("--policy", str(_plan_policy(t, "FFRF"))),
        "'FFRF' has 4 steps but the run takes 3",
    ),
    "plan too short": (
        hetcache_main,
        lambda t: _run("--policy", str(_plan_policy(t, "FF"))),
        "'FF' has 2 steps but the run takes 3",
    ),
    "plan ending on R": (
        hetcache_main,
        lambda t: _run("--policy", str(_plan_policy(t, "FFR"))),
        "'FFR' ends on R",
    ),
    "--compare without --policy": (hetcache_main, lambda t: _run("--compare"), "no --policy was given"),
    "--reps without --compare": (
        hetcache_main,
        lambda t: _run("--policy", "reference-psnr35", "--reps", "2"),
        "--reps 2 sets the timing rounds of --compare",
    ),
    "--budget twice": (
        tune_main,
        lambda t: ["--budget", "psnr=30", "--budget", "psnr=35", *SMALL],
        "argument --budget: given twice",
    ),
    "empty --study-name": (
        tune_main,
        lambda t: ["--budget", "psnr=30", "--study-name", "", *SMALL],
        "argument --study-name: must be a non-empty name",
    ),
    "export: empty --study-name": (
        tune_main,
        lambda t: ["export", "--storage", str(t / "study.db"), "--study-name", " ", "--export", str(t / "p.json")],
        "argument --study-name: must be a non-empty name",
    ),
}


@pytest.mark.parametrize("case", list(PREFLIGHT_CASES))
def test_preflight_refuses_bad_inputs_before_any_model_is_built(tmp_path, case):
    main, build, message = PREFLIGHT_CASES[case]
    args = build(tmp_path)
    if "--out" not in args and args[:1] not in (["export"], ["plan-memory"], ["policies"]):
        args = [*args, "--out", str(tmp_path / "out")]
    before = tree(tmp_path)
    code, out, err = call(main, *args)
    errors = [line for line in err.splitlines() if "error:" in line]  # argparse shows its usage above its one
    assert code == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in err and out == "", err
    assert tree(tmp_path) == before and not (tmp_path / "out").exists()


def test_the_size_a_plan_memory_refusal_names_is_planned():
    for flags in (["--frames", "100001"], ["--height", "100000", "--width", "100000", "--model", "wan2.1-vace-14b"]):
        code, _, err = call(hetcache_main, "plan-memory", *flags)
        assert code == 2 and "Fix: use at most --height" in err
        height, width = err.split("use at most --height ")[1].split(" at ")[0].split(" --width ")
        kept = flags[flags.index("--model") :] if "--model" in flags else []
        frames = ["--frames", flags[1]] if flags[0] == "--frames" else []
        code, out, err = call(hetcache_main, "plan-memory", "--height", height, "--width", width, *frames, *kept)
        assert code == 0 and f"{height}x{width}x" in out, err


# -- study storages: each kind of bad storage its own line, the same for tune, export and the dashboard ----------


def _text_file(tmp: Path) -> str:
    (tmp / "notes.db").write_text("my notes, not a database\n")
    return str(tmp / "notes.db")


def _damaged_sqlite(tmp: Path) -> str:
    """An SQLite file whose header and schema read but whose third page is overwritten."""
    import sqlite3

    path = tmp / "damaged.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE studies (study_id INTEGER PRIMARY KEY, study_name TEXT)")
        conn.executemany("INSERT INTO studies (study_name) VALUES (?)", [("x" * 500,)] * 50)
        conn.commit()
    data = bytearray(path.read_bytes())
    data[8192:8392] = b"\xff" * 200
    path.write_bytes(bytes(data))
    return str(path)


def _other_database(tmp: Path) -> str:
    import sqlite3

    path = tmp / "app.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
        conn.commit()
    return str(path)


# storage → (builder from tmp, message naming it with {tmp}, commands that refuse it)
STORAGE_CASES = {
    "a text file": (_text_file, "'{tmp}/notes.db' is not an SQLite database", ("tune", "export", "dashboard")),
    "a damaged SQLite file": (
        _damaged_sqlite,
        "SQLite database '{tmp}/damaged.db' is damaged (database disk image is malformed). Fix: restore it",
        ("tune", "export", "dashboard"),
    ),
    "another application's database": (
        _other_database,
        "SQLite database '{tmp}/app.db' holds tables of another application (users), not Optuna studies",
        ("tune", "export", "dashboard"),
    ),
    "an unknown dialect": (
        lambda t: "foo://host/db",
        "storage 'foo://host/db': SQLAlchemy knows no database dialect 'foo'. Fix: use postgresql+psycopg",
        ("tune", "export", "dashboard"),
    ),
    "an unreachable server": (
        lambda t: "postgresql+psycopg://user:secret@127.0.0.1:9/db",
        "cannot connect to the study storage 'postgresql+psycopg://user:***@127.0.0.1:9/db' (connection",
        ("tune", "export", "dashboard"),
    ),
}
STORAGE_COMMANDS = {
    "tune": lambda url, t: (tune_main, ["--budget", "psnr=30", *SMALL, "--storage", url, "--out", str(t / "o")]),
    "export": lambda url, t: (tune_main, ["export", "--storage", url, "--study-name", "s", "--export", str(t / "p")]),
    "dashboard": lambda url, t: (dashboard_main, ["--storage", url, "--port", "8599"]),
}


@pytest.mark.parametrize(
    ("case", "command"), [(case, cmd) for case, (_, _, cmds) in STORAGE_CASES.items() for cmd in cmds]
)
def test_bad_storages_are_refused_in_one_line_and_nothing_is_written(tmp_path, case, command):
    build, message, _ = STORAGE_CASES[case]
    main, args = STORAGE_COMMANDS[command](build(tmp_path), tmp_path)
    before = tree(tmp_path)
    code, out, err = call(main, *args)
    assert code == 2 and message.format(tmp=tmp_path) in err and "Fix:" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and out == ""
    assert tree(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == sorted(before)


# -- tuning: resume, overwrite and the trial count mean one thing ---------------------------------------------------


def test_resume_of_a_missing_study_is_refused_and_creates_nothing(tmp_path):
    code, _, err = call(tune_main, "--budget", "psnr=30", "--resume", *SMALL, "--out", str(tmp_path / "tune"))
    assert code == 2 and "--resume: study 'reference-psnr30' does not exist" in err and "drop --resume" in err
    assert not (tmp_path / "tune").exists()


def test_a_resume_with_other_workload_settings_names_them(tmp_path):
    base = ["--budget", "psnr=20", "--trials", "1", "--no-warm-start", "--out", str(tmp_path / "tune")]
    assert call(tune_main, *base, *SMALL)[0] in (0, 3)
    other = [*SMALL[:2], "--steps", "2", *SMALL[4:6], "--seed", "4", *SMALL[6:]]
    code, _, err = call(tune_main, *base, *other, "--resume")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "tuned on another workload (seed: study 0, this run 4; steps: study 3, this run 2)" in err


@pytest.fixture(scope="module")
def small_profile(tmp_path_factory) -> Path:
    """A profile of SMALL (random weights, 3 steps, 64x64x9, contract none)."""
    out = tmp_path_factory.mktemp("profile") / "profile"
    assert call(profile_main, *SMALL, "--out", str(out))[0] == 0
    return out


def test_a_profile_of_another_workload_is_refused_naming_the_fields(tmp_path, small_profile):
    other = [*SMALL[:2], "--steps", "2", *SMALL[4:8], "--width", "80", *SMALL[10:]]
    args = [
        "--budget",
        "psnr=20",
        "--trials",
        "1",
        "--profile",
        str(small_profile),
        "--out",
        str(tmp_path / "runs" / "t"),
    ]
    code, out, err = call(tune_main, *args, *other, "--weights", "trained")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert (
        f"profile '{small_profile}' was made on another workload: weights 'random' (this study 'trained'); steps 3 "
        "(this study 2); size '64x64x9' (this study '80x64x9'). Fix: profile this workload"
    ) in err
    assert list(tmp_path.iterdir()) == []  # no tuning folder (nor its parent), study.db, lock or claim file
    code, _, err = call(tune_main, *args, *SMALL, "--guidance-scale", "4", "--no-warm-start")
    assert (
        code in (0, 3)
        and f"warning: profile '{small_profile}' was made with guidance_scale 5.0 (this study 4.0)" in err
    )


def _tune_process(*args: str) -> subprocess.Popen:
    """`hetcache-tune ARGS` as its own process (one thread; output captured, so no progress bar)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "hetcache.tuner", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_two_runs_on_one_folder_started_together_one_runs_the_other_is_refused(tmp_path):
    import optuna

    out = tmp_path / "tune"
    args = ["--budget", "psnr=20", "--trials", "3", "--no-warm-start", *SMALL, "--out", str(out)]
    processes = [_tune_process(*args), _tune_process(*args)]
    results = [(p.wait(timeout=900), *p.communicate()) for p in processes]
    ran = [r for r in results if r[0] in (0, 3)]
    refused = [r for r in results if r[0] == 2]
    assert len(ran) == 1 and len(refused) == 1, results
    err = refused[0][2]
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"--out '{out}' is being tuned right now by another hetcache-tune (pid " in err
    study = optuna.load_study(study_name="reference-psnr20", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 3  # the trials of one run, not of two
    assert not claim_path(out.resolve()).exists()  # released on exit


def test_a_claim_left_by_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "tune"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    claim_path(out).write_text(f"pid {dead.pid} on {socket.gethostname()}\n")  # its holder was killed
    code, _, err = call(tune_main, "--budget", "psnr=20", "--trials", "1", "--no-warm-start", *SMALL, "--out", str(out))
    assert code in (0, 3), err
    assert not claim_path(out).exists()


def test_ctrl_c_twice_during_a_trial_exits_130_and_requeues_its_point(tmp_path):
    import optuna

    out, name = tmp_path / "tune", "reference-psnr20"
    flags = [*SMALL[:2], "--steps", "8", *SMALL[4:]]  # trials of a few seconds
    process = _tune_process("--budget", "psnr=20", "--trials", "50", "--no-warm-start", *flags, "--out", str(out))
    storage = f"sqlite:///{out / 'study.db'}"
    deadline, started = time.monotonic() + 600, None
    while started is None and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
        with contextlib.suppress(Exception):  # the study may not exist yet (read-only: never create its tables)
            trials = optuna.load_study(study_name=name, storage=open_storage(storage, read_only=True)).trials
            started = next((t for t in trials if t.state == optuna.trial.TrialState.RUNNING and t.params), None)
    assert started is not None, process.communicate()
    process.send_signal(signal.SIGINT)
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    code = process.wait(timeout=300)
    _, err = process.communicate()
    assert code == 130 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and "interrupted; finished trials stay in the study" in err, err
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()  # the study reads back whole
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    waiting = [t for t in trials if t.state == optuna.trial.TrialState.WAITING]
    assert len(failed) == 1 and failed[0].params and not any(t.state.name == "RUNNING" for t in trials), trials
    assert [t.params for t in waiting] == [failed[0].params]
    assert f"trial {failed[0].number}'s point is queued to run again" in err


def test_another_studys_policy_is_kept_unless_overwrite_and_never_left_beside_a_failed_study(tmp_path):
    out = tmp_path / "tune"
    out.mkdir()
    write_marker(out, "tune")
    policy = json.loads(policies.policy_path("reference-psnr35").read_text())
    (out / "policy.json").write_text(json.dumps(policy))  # shipped: exported from study 'reference-psnr35'
    before = tree(out)
    args = ["--budget", "psnr=100", "--trials", "1", "--no-warm-start", *SMALL, "--out", str(out)]
    code, _, err = call(tune_main, *args)
    assert code == 2 and "holds the export of study 'reference-psnr35', not of study 'reference-psnr100'" in err
    assert tree(out) == before
    code, out_text, err = call(tune_main, *args, "--overwrite")
    assert code == 3 and "No policy was written" in err
    assert not (out / "policy.json").exists() and "removed" in out_text


def test_trials_is_the_total_and_labels_name_the_missed_constraint(tmp_path):
    out = tmp_path / "tune"
    base = ["--budget", "psnr=20", "--min-speedup", "50", *SMALL, "--out", str(out)]
    code, stdout, _ = call(tune_main, *base, "--trials", "1")
    assert code == 3
    assert "1 completed trials of the --trials 1 it should hold (1 run by this worker" in stdout
    assert "misses min speedup 50x (" in stdout and "misses budget" not in stdout
    code, stdout, _ = call(tune_main, *base, "--trials", "2")
    assert code == 2  # the study exists: continuing it is explicit
    code, stdout, _ = call(tune_main, *base, "--trials", "2", "--resume")
    assert code == 3 and "2 completed trials of the --trials 2 it should hold (1 run by this worker" in stdout


def test_an_interrupted_trial_prints_no_optuna_traceback():
    import logging

    import optuna
    from hetcache.tuner.cli import quiet_interrupts

    def interrupted(trial):
        raise KeyboardInterrupt

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    shown = io.StringIO()
    handler = logging.StreamHandler(shown)  # stands for Optuna's own stderr handler
    logging.getLogger("optuna").addHandler(handler)
    try:
        study = optuna.create_study()
        with quiet_interrupts(), pytest.raises(KeyboardInterrupt):
            study.optimize(interrupted, n_trials=1)
        assert shown.getvalue() == ""
        with pytest.raises(KeyboardInterrupt):  # outside, Optuna logs the failed trial as it always did
            study.optimize(interrupted, n_trials=1)
        assert "Traceback" in shown.getvalue() and "KeyboardInterrupt" in shown.getvalue()
    finally:
        logging.getLogger("optuna").removeHandler(handler)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2  # the study keeps the trials
