"""Packaging: the sdist holds no build outputs, the version is defined once, and importing a tree
without the compiled engine says what to do."""
from __future__ import annotations

import importlib.machinery
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import afde_nb

ROOT = Path(__file__).resolve().parents[1]
# what a CMake / scikit-build-core / setuptools build leaves behind (the 49 files once tracked in git)
BUILD_OUTPUT = re.compile(r"(^|/)(CMakeCache\.txt|CMakeInit\.txt|CMakeFiles|\.cmake|build\.ninja|\.ninja_deps|"
                          r"\.ninja_log|cmake_install\.cmake|\.skbuild-info\.json|_skbuild|build|dist|"
                          r"__pycache__|\.pytest_cache|\.hypothesis|[^/]*\.egg-info)(/|$)|"
                          r"\.(o|obj|so|pyd|dylib|a|pyc)$")


def _source_tree() -> Path:
    if not (ROOT / "pyproject.toml").is_file():
        pytest.skip("not run from a source checkout")
    return ROOT


def test_sdist_holds_no_build_outputs(tmp_path):
    pytest.importorskip("scikit_build_core", reason="the 'test' extra installs scikit-build-core")
    root = _source_tree()
    out = subprocess.run([sys.executable, "-c", "import sys, scikit_build_core.build as b; "
                          "print(b.build_sdist(sys.argv[1]))", str(tmp_path)],
                         cwd=root, capture_output=True, text=True, check=True)
    sdist = tmp_path / out.stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        names = [m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name]
        pkg_info = tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("/PKG-INFO"))).read()
    outputs = sorted(n for n in names if BUILD_OUTPUT.search(n))
    assert outputs == [], f"build outputs in the sdist: {outputs[:10]}"
    for needed in ["pyproject.toml", "CMakeLists.txt", "README.md", "afde_nb/__init__.py", "cpp/bindings.cpp",
                   "cpp/cluster.cpp", "extern/eigen/Eigen/Dense"]:
        assert needed in names, needed
    assert f"\nVersion: {afde_nb.__version__}\n" in pkg_info.decode()


def test_the_version_is_defined_once():
    root = _source_tree()
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    meta = project["tool"]["scikit-build"]["metadata"]["version"]
    assert meta["input"] == "afde_nb/__init__.py"
    init = (root / "afde_nb" / "__init__.py").read_text()
    assert re.findall(r'^__version__ = "([^"]+)"', init, re.M) == [afde_nb.__version__]
    assert importlib.metadata.version("afde-nb") == afde_nb.__version__


def _import_copy(tmp_path: Path, engine: bytes | None) -> subprocess.CompletedProcess:
    """Import a copy of the package source (no site-packages, so no installed engine can be found)."""
    shutil.copytree(Path(afde_nb.__file__).parent, tmp_path / "afde_nb",
                    ignore=shutil.ignore_patterns("_core*", "__pycache__"))
    if engine is not None:
        (tmp_path / "afde_nb" / f"_core{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(engine)
    return subprocess.run([sys.executable, "-S", "-c", "import sys; sys.path.insert(0, sys.argv[1]); import afde_nb",
                           str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)


def test_import_without_the_engine_says_what_to_do(tmp_path):
    run = _import_copy(tmp_path, None)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: afde_nb cannot import its compiled C++ engine"), run.stderr
    assert "has no built engine" in last and "pip install ." in last and "pip install -e ." in last
    assert "another directory" in last and "circular import" not in run.stderr


def test_import_with_a_broken_engine_says_so(tmp_path):
    run = _import_copy(tmp_path, b"not a shared library")
    last = run.stderr.strip().splitlines()[-1]
    assert run.returncode != 0 and "failed to load" in last and "pip install" in last, run.stderr
