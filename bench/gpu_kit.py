"""The GPU kit: what bench/gpu.sh needs on a GPU machine that has torch but nothing of ours.

    python bench/gpu_kit.py requirements          # the wheels to carry, as name==version
    python bench/gpu_kit.py check --kit .gpu-kit  # they cover every import; sizes; the device call
    python bench/gpu_kit.py tiny-archive SRC DST  # the dry run's few images per class of SRC

bench/gpu_prepare.sh calls the first two. The GPU machine's image has Python 3.12, torch,
torchvision, numpy and pillow (`IMAGE`), no pydantic, and nothing can be downloaded there. What
the GPU run imports beyond that is found by following the imports of the scripts gpu.sh runs
(`ENTRY_POINTS`) through `ml/` and `bench/`; their distributions and everything those require
(read from this machine's installed metadata, markers evaluated for Python 3.12 on Linux) are
carried as wheels, at the versions installed and tested here. Standard library only: it must run
wherever gpu.sh does.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata as metadata
import json
import re
import subprocess
import sys
import tarfile
import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parent.parent
ENTRY_POINTS = (
    "bench/gpu_env.py",
    "bench/gpu_checks.py",
    "bench/gpu_recipes.py",
    "bench/train_throughput.py",
    "bench/gpu_summary.py",
)  # gpu.sh runs this file only with --dry-run, on the CPU machine
LOCAL_PACKAGES = ("ml", "bench")
# Import names the GPU machine's image provides (its python3 also holds typing-extensions, but
# maybe older than pydantic needs: it is carried when required).
IMAGE = {"torch": "torch", "torchvision": "torchvision", "numpy": "numpy", "PIL": "pillow"}
TARGET_PYTHON = "3.12"
MAX_KIT_MIB = 60
MAX_TREE_MIB = 64  # the device tool's limit on everything that travels
COMMAND = "bash bench/gpu.sh"
TIMEOUT_S = 600  # the device tool's most; gpu.sh plans 540 s


# --- what the GPU run imports -----------------------------------------------------------------------


def third_party_imports(entry_points: tuple[str, ...] = ENTRY_POINTS, root: Path = REPO) -> set[str]:
    """Top-level names of every non-standard, non-local module imported (anywhere in a file, in
    functions too) by the entry points and the ml/ and bench/ modules they reach."""
    seen: set[Path] = set()
    found: set[str] = set()
    todo = [root / p for p in entry_points]
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        for name in _imported_modules(path):
            top = name.split(".")[0]
            if top in LOCAL_PACKAGES:
                todo.extend(_module_files(root, name))
            elif top not in sys.stdlib_module_names and top != "__future__":
                found.add(top)
    return found


def _imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)  # `from ml import x`
    return names


def _module_files(root: Path, dotted: str) -> list[Path]:
    base = root.joinpath(*dotted.split("."))
    return [p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()]


def required_distributions(imports: set[str]) -> dict[str, str]:
    """{distribution: installed version} to carry: those providing `imports` beyond the image,
    and everything they require on Python 3.12 / Linux."""
    providers = metadata.packages_distributions()
    missing = sorted(name for name in imports - set(IMAGE) if name not in providers)
    if missing:
        raise SystemExit(f"imported by the GPU run but not installed here: {', '.join(missing)}")
    todo = [providers[name][0] for name in imports - set(IMAGE)]
    needed: dict[str, str] = {}
    while todo:
        dist = metadata.distribution(todo.pop())
        name = _canonical(dist.metadata["Name"])
        if name in needed or name in {_canonical(d) for d in IMAGE.values()}:
            continue
        needed[name] = dist.version
        todo.extend(_requirement_name(r) for r in dist.requires or [] if _applies(r))
    return dict(sorted(needed.items()))


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"cannot read the requirement {requirement!r}")
    return match.group(1)


def _applies(requirement: str) -> bool:
    """Whether a Requires-Dist line applies to Python 3.12 on Linux without extras."""
    if ";" not in requirement:
        return True
    marker = requirement.split(";", 1)[1]
    if "extra" in marker:
        return False
    return _marker(marker)


def _marker(marker: str) -> bool:
    try:
        from packaging.markers import Marker
    except ImportError:  # pip vendors it
        from pip._vendor.packaging.markers import Marker
    env = {"python_version": TARGET_PYTHON, "python_full_version": f"{TARGET_PYTHON}.3"}
    env |= {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix"}
    env |= {"platform_machine": "x86_64", "implementation_name": "cpython"}
    return bool(Marker(marker).evaluate(env))


# --- the kit ------------------------------------------------------------------------------------------


def wheel_metadata(wheel: Path) -> tuple[str, str, list[str]]:
    """(canonical name, version, Requires-Dist lines) of a wheel file."""
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(name).decode()
    fields = [line.split(":", 1) for line in text.split("\n\n", 1)[0].splitlines() if ":" in line]
    values = [(k.strip(), v.strip()) for k, v in fields]
    get = dict(values)
    requires = [v for k, v in values if k == "Requires-Dist"]
    return _canonical(get["Name"]), get["Version"], requires


def check_kit(kit: Path, needed: dict[str, str]) -> list[str]:
    """Problems with the kit: a needed wheel missing or at another version, two versions of one,
    a wheel's requirement not carried nor on the image, no data archive, too many MiB."""
    problems = []
    wheels = sorted((kit / "wheels").glob("*.whl"))
    carried = [wheel_metadata(w) for w in wheels]
    counts = Counter(name for name, _, _ in carried)
    problems += [f"{name}: {n} wheels (pip refuses two versions)" for name, n in counts.items() if n > 1]
    versions = {name: version for name, version, _ in carried}
    for name, version in needed.items():
        if versions.get(name) != version:
            problems.append(f"{name}=={version}: not in {kit / 'wheels'} (found {versions.get(name)})")
    image = {_canonical(d) for d in IMAGE.values()}
    for name, _, requires in carried:
        for requirement in filter(_applies, requires):
            wanted = _canonical(_requirement_name(requirement))
            if wanted not in versions and wanted not in image:
                problems.append(f"{name} requires {requirement}: neither carried nor on the image")
    if not (kit / "cifar10-jpeg.tar.gz").is_file():
        problems.append(f"no {kit / 'cifar10-jpeg.tar.gz'}")
    if mib(kit) > MAX_KIT_MIB:
        problems.append(f"{kit} holds {mib(kit):.1f} MiB; at most {MAX_KIT_MIB}")
    return problems


def mib(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def travelling_mib(root: Path, kit: Path) -> float | None:
    """What a device call sends: the tracked and untracked-not-ignored files, plus the kit."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    files = [root / name for name in listed.decode().split("\0") if name]
    return sum(p.stat().st_size for p in files if p.is_file()) / 2**20 + mib(kit)


def device_call(kit: Path, root: Path = REPO) -> dict[str, object]:
    """The `run` call of the device tool that runs the kit, within the tool's limits."""
    call: dict[str, object] = {
        "command": COMMAND,
        "carry": [kit.resolve().relative_to(root.resolve()).as_posix()],
        "timeout_s": TIMEOUT_S,
    }
    assert len(str(call["command"])) <= 2000 and len(call["carry"]) <= 8  # type: ignore[arg-type]
    return call


# --- the dry run's data -------------------------------------------------------------------------------


def tiny_archive(source: Path, target: Path, train_per_class: int, test_per_class: int) -> dict[str, int]:
    """Copy the first images of each class of each split of a {train,test}/<class>/<image> archive."""
    limits = {"train": train_per_class, "test": test_per_class}
    kept: Counter[tuple[str, str]] = Counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(source, "r|gz") as src, tarfile.open(target, "w:gz") as dst:
        for member in src:
            parts = PurePosixPath(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[-3] not in limits:
                continue
            key = (parts[-3], parts[-2])
            if kept[key] >= limits[parts[-3]]:
                continue
            dst.addfile(member, src.extractfile(member))
            kept[key] += 1
    return {split: sum(n for (s, _), n in kept.items() if s == split) for split in limits}


# --- the command line -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("requirements", help="print the wheels to carry, name==version")
    check = commands.add_parser("check", help="check a kit and print the device call")
    check.add_argument("--kit", type=Path, default=REPO / ".gpu-kit")
    tiny = commands.add_parser("tiny-archive", help="a few images per class of an archive")
    tiny.add_argument("source", type=Path)
    tiny.add_argument("target", type=Path)
    tiny.add_argument("--train-per-class", type=int, default=4)
    tiny.add_argument("--test-per-class", type=int, default=2)
    args = parser.parse_args(argv)

    if args.command == "tiny-archive":
        counts = tiny_archive(args.source, args.target, args.train_per_class, args.test_per_class)
        print(f"{args.target}: {counts['train']} train and {counts['test']} test images")
        return
    needed = required_distributions(third_party_imports())
    if args.command == "requirements":
        print("\n".join(f"{name}=={version}" for name, version in needed.items()))
        return
    problems = check_kit(args.kit, needed)
    travelling = travelling_mib(REPO, args.kit)
    if travelling is not None and travelling > MAX_TREE_MIB:
        problems.append(
            f"{travelling:.1f} MiB would travel with the kit; the device tool takes {MAX_TREE_MIB}"
        )
    if problems:
        raise SystemExit("the kit is not ready:\n  " + "\n  ".join(problems))
    print(f"kit {args.kit}: {mib(args.kit):.1f} MiB (at most {MAX_KIT_MIB}); wheels: {', '.join(needed)}")
    if travelling is not None:
        print(f"the call sends {travelling:.1f} MiB in all (at most {MAX_TREE_MIB})")
    print("the device call (run it from this checkout's root):")
    print(json.dumps(device_call(args.kit), indent=2))


if __name__ == "__main__":
    main()
