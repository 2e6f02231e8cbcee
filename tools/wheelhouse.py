"""Installing the suite on a machine without a package index (offline hospital servers, closed clusters).

Such machines usually come with PyTorch and much of its stack. Two steps, with nothing but the standard library
and pip (this file imports nothing from the suite, so it runs before the suite's requirements are there):

    # on the offline machine: what the suite needs that this Python lacks (prints nothing when complete)
    python3 tools/wheelhouse.py missing                      # exit status 1 when something is missing
    python3 -m pip freeze > have.txt                         # what it has, to take to a connected machine
    # on a connected machine: the wheels of exactly what is missing, for the offline machine's Python and platform
    python3 tools/wheelhouse.py download wheelhouse/ --have have.txt --python-version 3.12
    # back on the offline machine (or let benchmarks/gpu_check.sh do it)
    python3 -m pip install --no-index --no-deps --target site/ wheelhouse/*.whl && export PYTHONPATH=$PWD/src:$PWD/site

``download`` follows the requirements of every wheel it fetches (their markers evaluated for the target Python
and platform) and fetches a package only when ``--have`` lacks it or holds a version the requirement refuses;
without ``--have`` it assumes the PyTorch stack of a typical GPU machine (``ASSUMED_PRESENT``).
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ImportError:  # a bare Python: pip's own copy
    from pip._vendor.packaging.markers import default_environment
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import Version

try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
# A PyTorch GPU machine's usual stack, assumed present when no --have file is given (name -> no version check).
ASSUMED_PRESENT = ("torch", "torchvision", "triton", "numpy", "pillow", "sympy", "mpmath", "networkx", "jinja2",
                   "markupsafe", "filelock", "fsspec", "typing-extensions", "setuptools", "pip", "wheel")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def project_requirements(extras: tuple[str, ...] = (), build: bool = False) -> list[Requirement]:
    """The suite's runtime requirements (pyproject.toml) with the named extras, and its build requirements
    (setuptools, wheel: for ``pip install .``; running from ``src/`` needs none) when ``build``."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    names = list(project["project"]["dependencies"]) + (list(project["build-system"]["requires"]) if build else [])
    for extra in extras:
        names += [r for r in project["project"]["optional-dependencies"][extra] if not r.startswith("pneumollm")]
    return [Requirement(r) for r in names]


def missing_here(requirements: list[Requirement]) -> list[str]:
    """The requirements this Python does not satisfy, as ``name (reason)``."""
    out = []
    for req in requirements:
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            out.append(f"{req} (not installed)")
            continue
        if req.specifier and not req.specifier.contains(Version(version), prereleases=True):
            out.append(f"{req} (found {version})")
    return out


def read_have(path: Path | None) -> dict[str, Version | None]:
    """``pip freeze`` output as {name: version}; the assumed PyTorch stack without a file."""
    if path is None:
        return {canonicalize_name(n): None for n in ASSUMED_PRESENT}
    have: dict[str, Version | None] = {}
    for line in path.read_text().splitlines():
        found = re.match(r"^([A-Za-z0-9_.\-]+)\s*(?:==\s*([^\s;]+)|@)", line.strip())
        if found:
            version = found.group(2)
            have[canonicalize_name(found.group(1))] = Version(version) if version else None
    return have


def target_environment(python_version: str) -> dict[str, str]:
    """Marker values of a CPython ``python_version`` on Linux x86-64."""
    env = dict(default_environment())
    env.update(python_version=python_version, python_full_version=f"{python_version}.0", sys_platform="linux",
               platform_system="Linux", platform_machine="x86_64", os_name="posix",
               implementation_name="cpython", platform_python_implementation="CPython")
    return env


def wheel_requirements(wheel: Path, env: dict[str, str]) -> list[Requirement]:
    """A wheel's ``Requires-Dist`` that apply in ``env`` (no extras)."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(meta).decode("utf-8", "replace").splitlines()
    reqs = [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({**env, "extra": ""})]


def fetch(req: Requirement, dest: Path, python_version: str) -> Path:
    """One wheel for ``req`` (no dependencies) for the target Python; pure-Python sdists are built into a wheel."""
    before = set(dest.glob("*.whl"))
    abi = "cp" + python_version.replace(".", "")
    download = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d",
                str(dest), "--python-version", python_version, "--implementation", "cp", "--abi", abi,
                "--abi", "abi3", "--abi", "none", *(f"--platform={p}" for p in PLATFORMS), "--platform=any",
                str(req)]
    done = subprocess.run(download, capture_output=True, text=True)
    if done.returncode != 0:  # no wheel published (e.g. antlr4-python3-runtime): build one, pure Python only
        with tempfile.TemporaryDirectory() as tmp:
            built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", tmp,
                                    str(req)], capture_output=True, text=True)
            wheels = list(Path(tmp).glob("*-none-any.whl"))
            if built.returncode != 0 or not wheels:
                raise SystemExit(f"error: no wheel of {req} for CPython {python_version} on Linux x86-64:\n"
                                 f"{done.stderr.strip()[-800:]}")
            target = dest / wheels[0].name
            wheels[0].replace(target)
            return target
    new = sorted(set(dest.glob("*.whl")) - before)
    if new:
        return new[0]
    # already in dest from an earlier call
    prefix = canonicalize_name(req.name).replace("-", "_")
    return next(w for w in dest.glob("*.whl") if canonicalize_name(w.name.split("-")[0]).replace("-", "_") == prefix)


def download(dest: Path, have: dict[str, Version | None], python_version: str, extras: tuple[str, ...]) -> list[Path]:
    """Every wheel the target needs beyond ``have``: the suite's requirements and their requirements in turn."""
    dest.mkdir(parents=True, exist_ok=True)
    env = target_environment(python_version)
    queue = [r for r in project_requirements(extras, build=True) if r.marker is None or r.marker.evaluate(env)]
    fetched: dict[str, Path] = {}
    while queue:
        req = queue.pop(0)
        name = canonicalize_name(req.name)
        if name in fetched or name == "pneumollm":
            continue
        if name in have and (have[name] is None or req.specifier.contains(have[name], prereleases=True)):
            continue
        wheel = fetch(req, dest, python_version)
        fetched[name] = wheel
        print(f"{wheel.name}", flush=True)
        queue += wheel_requirements(wheel, env)
    return list(fetched.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    miss = sub.add_parser("missing", help="the suite's requirements this Python lacks (exit 1 when any)")
    miss.add_argument("--extras", default="", help="optional extras to include, e.g. quant")
    get = sub.add_parser("download", help="wheels of what a machine lacks, for its Python and platform")
    get.add_argument("dest", type=Path)
    get.add_argument("--have", type=Path, default=None, help="`pip freeze` of the offline machine")
    get.add_argument("--python-version", default="3.12", help="the offline machine's Python (major.minor)")
    get.add_argument("--extras", default="", help="optional extras to include, e.g. quant")
    args = parser.parse_args(argv)
    extras = tuple(e for e in args.extras.split(",") if e)
    if args.command == "missing":
        lacking = missing_here(project_requirements(extras))
        print("\n".join(lacking))
        return 1 if lacking else 0
    wheels = download(args.dest, read_have(args.have), args.python_version, extras)
    size = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"{len(wheels)} wheels, {size:.1f} MiB in {args.dest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
