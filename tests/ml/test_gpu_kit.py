"""The GPU kit cannot rot: bench/gpu.sh --dry-run runs every step on the CPU (tiny synthetic
archive, a hand-made wheel in the kit), and the kit's own logic (what to carry, its checks, the
device call, the time estimate that skips a recipe, the summary of a run cut short) is tested
without a GPU or a network."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from bench import gpu_kit, gpu_recipes, gpu_summary
from ml.config import TrainConfig
from tests.synthetic import write_image_folder, write_tar_gz

REPO = Path(__file__).resolve().parents[2]
GPU_SH = REPO / "bench" / "gpu.sh"


def make_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A minimal pure-Python wheel that pip installs."""
    module = name.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{info}/RECORD"])
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return wheel


@pytest.mark.slow
def test_gpu_sh_dry_run_runs_every_step_on_the_cpu(tmp_path: Path) -> None:
    kit = tmp_path / "kit"
    kit.mkdir()
    write_image_folder(tmp_path / "tree", n_train_per_class=12, n_test_per_class=3, fmt="jpg")
    write_tar_gz(tmp_path / "tree", kit / "cifar10-jpeg.tar.gz")
    make_wheel(kit / "wheels", "kit-probe", "1.0")
    out = tmp_path / "out"
    env = os.environ | {"OUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}  # two shared cores
    env.pop("BENCH_CACHE", None)
    done = subprocess.run(
        ["bash", str(GPU_SH), "--dry-run", "--kit", str(kit)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    summary = json.loads((out / "summary.json").read_text())
    steps = {s["step"]: s["status"] for s in summary["steps"]}
    expected = ["install", "environment", "checks", "tiny-data", "data", "recipe:default"]
    expected += ["recipe:compiled", "recipe:airbench_aug", "throughput"]
    assert steps == dict.fromkeys(expected, "ok"), summary["steps"]
    assert summary["run"]["mode"] == "dry-run"
    assert all(m["ok"] for m in summary["env"]["modules"])
    checks = {c["check"]: c["status"] for c in summary["checks"]["checks"]}
    assert checks == {
        "augmentation on the device": "ok",
        "bf16 + channels_last training step": "ok",
        "DataParallel trial": "skipped",  # no GPUs here
        "DDP trial": "ok",
    }
    default, compiled, airbench = summary["recipes"]
    assert default["recipe"] == "default" and default["config"] == TrainConfig(epochs=2).model_dump(
        mode="json"
    )
    assert [m["epoch"] for m in default["curve"]] == [1, 2]
    assert all(0.0 <= m["test_accuracy"] <= 1.0 for m in default["curve"])  # the test curve
    assert 0.0 <= default["test_accuracy"] <= 1.0 and default["wall_seconds"] > 0
    assert [t["tta"] for t in default["tta"]] == ["none", "mirror", "mirror+translate1"]
    assert compiled["environment"]["compiled"] is True and compiled["compile_seconds"] > 0
    assert (
        airbench["config"]["augment"]["flip_mode"] == "alternate" and airbench["config"]["tta_translate"] == 1
    )
    throughput = summary["throughput"]["reference"]
    assert throughput["ratio"] > 0
    assert summary["best"]["by_validation"] in {"default", "compiled", "airbench_aug"}
    # The tables come last in the output, and the log and summary are all that is left behind.
    assert "default recipe, epoch: val / test accuracy" in done.stdout
    headline = json.loads(done.stdout.split("the headline:\n")[1].splitlines()[0])
    assert headline == summary["headline"] and headline["steps_not_ok"] == []
    assert sorted(p.name for p in out.iterdir()) == ["gpu.log", "summary.json"]
    scratch = re.search(r"scratch (\S+)", done.stdout)
    assert scratch is not None and not Path(scratch.group(1)).exists()


def test_every_recipe_gpu_sh_names_is_a_valid_config() -> None:
    lists = re.findall(r'recipes="\$\{recipes:-([a-z0-9_,]+)\}"', GPU_SH.read_text())
    assert len(lists) == 2  # the GPU run's and the dry run's
    named = {name for names in lists for name in names.split(",")}
    assert named <= set(gpu_recipes.RECIPES) and set(gpu_recipes.RECIPES) - {"default"} <= named
    assert gpu_recipes.recipe_config("default") == TrainConfig()
    for name in gpu_recipes.RECIPES:
        cfg = gpu_recipes.recipe_config(name)
        assert cfg != TrainConfig() or name == "default", name
        assert gpu_recipes.recipe_config(name, epochs=3).epochs == 3


def test_a_recipe_that_would_not_fit_is_skipped_before_it_starts(tmp_path: Path) -> None:
    # 40 epochs of 2 s; 30 s of start-up, data, set-up and tests; the test curve is not counted.
    reference = {
        "process_seconds": 120.0,
        "train_seconds": 80.0,
        "epochs_run": 40,
        "test_curve_seconds": 10.0,
    }
    assert gpu_recipes.estimate_seconds(TrainConfig(), reference) == pytest.approx(110.0)
    assert gpu_recipes.estimate_seconds(TrainConfig(epochs=60), reference) == pytest.approx(150.0)
    compiled = TrainConfig(compile=True, compile_mode="reduce-overhead")
    assert gpu_recipes.estimate_seconds(compiled, reference) == pytest.approx(110.0 + 150.0)

    (tmp_path / "default.json").write_text(json.dumps(reference))
    result = tmp_path / "epochs60.json"
    args = ["--recipe", "epochs60", "--seconds-left", "149", "--reference", str(tmp_path / "default.json")]
    gpu_recipes.main([*args, "--json", str(result), "--data", str(tmp_path / "absent.tar.gz")])
    skipped = json.loads(result.read_text())
    assert skipped["recipe"] == "epochs60" and skipped["skipped"] == "needs about 150 s, 149 s left"


def test_the_gpu_run_needs_only_the_image_and_the_carried_wheels() -> None:
    assert gpu_kit.third_party_imports() == {"torch", "torchvision", "numpy", "PIL", "pydantic"}
    needed = gpu_kit.required_distributions({"torch", "pydantic"})
    assert {"pydantic", "pydantic-core", "annotated-types", "typing-extensions"} <= set(needed)
    assert not {"torch", "numpy"} & set(needed)


def test_check_kit_names_what_is_missing_and_the_call_fits_the_device_tool(tmp_path: Path) -> None:
    kit = tmp_path / ".gpu-kit"
    needed = {"alpha": "1.0", "beta-core": "2.0"}
    make_wheel(kit / "wheels", "alpha", "1.0", ("beta-core==2.0", "gamma>=1; python_version < '3.8'"))
    problems = gpu_kit.check_kit(kit, needed)
    assert any(p.startswith("beta-core==2.0: not in") for p in problems)
    assert any("alpha requires beta-core==2.0" in p for p in problems)
    assert any("cifar10-jpeg.tar.gz" in p for p in problems)
    assert not any("gamma" in p for p in problems)  # its marker excludes Python 3.12

    make_wheel(kit / "wheels", "beta-core", "2.0")
    make_wheel(kit / "wheels", "alpha", "0.9")
    (kit / "cifar10-jpeg.tar.gz").write_bytes(b"\0" * 1024)
    assert gpu_kit.check_kit(kit, needed) == ["alpha: 2 wheels (pip refuses two versions)"]
    (kit / "wheels" / "alpha-0.9-py3-none-any.whl").unlink()
    assert gpu_kit.check_kit(kit, needed) == []
    (kit / "cifar10-jpeg.tar.gz").write_bytes(b"\0" * (61 * 2**20))
    assert gpu_kit.check_kit(kit, needed) == [f"{kit} holds 61.0 MiB; at most 60"]

    call = gpu_kit.device_call(kit, root=tmp_path)
    assert call == {"command": "bash bench/gpu.sh", "carry": [".gpu-kit"], "timeout_s": 600}


def test_tiny_archive_keeps_the_first_images_of_each_class(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "tree", n_train_per_class=5, n_test_per_class=4, fmt="jpg", num_classes=3)
    source = write_tar_gz(tmp_path / "tree", tmp_path / "full.tar.gz", prefix="cifar10/")
    counts = gpu_kit.tiny_archive(source, tmp_path / "tiny.tar.gz", train_per_class=2, test_per_class=1)
    assert counts == {"train": 6, "test": 3}
    with tarfile.open(tmp_path / "tiny.tar.gz") as tar:
        names = sorted(m.name for m in tar.getmembers() if m.isfile())
    assert len(names) == 9 and all(n.startswith("cifar10/") for n in names)


def test_the_summary_of_a_run_cut_short_keeps_what_it_measured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    (work / "steps.tsv").write_text(
        "checks\t0\t30\t300\nrecipe:default\t0\t90\t300\nrecipe:compiled\t124\t200\t200\n"
    )
    (work / "checks.json").write_text(
        json.dumps({"checks": [{"check": "DDP trial", "status": "ok", "detail": ""}]})
    )
    curve = [{"epoch": 1, "val_accuracy": 0.5, "test_accuracy": 0.49}]
    default = {
        "recipe": "default",
        "epochs_run": 1,
        "wall_seconds": 80.0,
        "train_seconds": 60.0,
        "images_per_second": 30000.0,
        "compile_seconds": None,
        "best_val_accuracy": 0.5,
        "best_epoch": 1,
        "test_accuracy": 0.49,
        "tta_chosen": {"tta": "mirror", "test_accuracy": 0.5},
        "gpu_memory_mib": {"peak_allocated": 3000.0},
        "curve": curve,
    }
    (work / "recipe-default.json").write_text(json.dumps(default))
    gpu_summary.main([str(work), str(out), "--print"])
    summary = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in summary["steps"]] == ["ok", "ok", "timed out"]
    assert summary["recipes"][1] == {"recipe": "compiled", "error": "no result (see the step)"}
    assert summary["best"] == {"by_validation": "default", "fastest": "default"}
    printed = capsys.readouterr().out
    assert (
        "| default | 1 | 80.0 | 60.00 | 30000 | - | 0.5000 (1) | 0.4900 | mirror: 0.5000 | 3000 |" in printed
    )
    assert "1: 0.5000 / 0.4900" in printed
    last = json.loads(printed.strip().splitlines()[-1])  # the headline, one JSON line
    assert last["steps_not_ok"] == ["recipe:compiled"] and last["default"]["test_accuracy"] == 0.49
