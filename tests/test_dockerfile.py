"""The Dockerfile installs what the Makefile installs, as a non-root user, with a gRPC health check.

No container builder is needed for these checks; `test_images_build` builds both images only where a Docker daemon
answers (and is marked slow: the cloud image downloads torch).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tomllib

import pytest

from tests.conftest import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()
MAKEFILE = (REPO / "Makefile").read_text()


def stages() -> dict[str, str]:
    """Each `FROM ... AS name` stage's text."""
    parts = re.split(r"^FROM\s+", DOCKERFILE, flags=re.M)[1:]
    out = {}
    for part in parts:
        header, _, body = part.partition("\n")
        out[header.split()[-1]] = body
    return out


def pip_installs(text: str) -> list[str]:
    """The arguments of every `pip install` (the Makefile's `$(PIP) install`), in order, continuation lines joined."""
    text = text.replace("\\\n", " ")
    return [" ".join(m.group(1).split()) for m in re.finditer(r"(?:pip|\$\(PIP\))\s+install\s+([^&\n]+)", text)]


def _args(install: str) -> list[str]:
    return [a for a in install.replace("'", "").split() if a not in ("-q", "--upgrade", "pip")]


def test_cloud_stage_installs_as_the_makefile_does():
    make = [_args(i) for i in pip_installs(MAKEFILE)]
    torch_make = next(a for a in make if any(x.startswith("torch==") for x in a))
    cloud = [_args(i) for i in pip_installs(stages()["cloud"])]
    cloud = [a for a in cloud if a]
    assert cloud[0] == torch_make, (cloud, torch_make)  # torch first, the same pin, the same build source
    project = cloud[1]
    assert "-c" in project and project[project.index("-c") + 1] == "constraints.txt"
    assert project[-1] == ".[cloud]"
    pinned = [line for line in (REPO / "constraints.txt").read_text().splitlines() if line.startswith("torch==")]
    assert pinned == torch_make  # constraints.txt keeps pip from replacing that torch


def test_device_stage_has_no_torch():
    device = [_args(i) for i in pip_installs(stages()["device"])]
    device = [a for a in device if a]
    assert device == [["-c", "constraints.txt", ".[device]"]]
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not any(dep.startswith("torch") for dep in extras["device"])


def test_images_run_as_a_non_root_user_with_a_health_check():
    for name in ("cloud", "device"):
        users = re.findall(r"^USER\s+(\S+)", stages()[name], flags=re.M)
        assert users and users[-1] not in ("root", "0"), name
    cloud = stages()["cloud"]
    check = re.search(r"^HEALTHCHECK .*?CMD (.+)$", cloud.replace("\\\n", " "), flags=re.M)
    assert check and "grpc_health" in check.group(1) and "SERVING" in check.group(1)
    assert re.search(r'^ENTRYPOINT \["lsc4rec", "cloud", "serve"', cloud, flags=re.M)


def test_the_sources_copied_are_the_packages_and_the_context_leaves_out_the_rest():
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in include}
    copied = set(re.findall(r"^COPY\s+(\w+)\s+\./\1$", stages()["source"], flags=re.M))
    assert copied == packages
    for name in ("pyproject.toml", "constraints.txt"):
        assert name in stages()["source"]
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".venv", "runs", "data", ".git"} <= ignored
    assert not packages & ignored


def _docker_works() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _docker_works(), reason="no Docker daemon answers here")
def test_images_build():
    for target in ("device", "cloud"):
        result = subprocess.run(["docker", "build", "--target", target, "-t", f"lsc4rec-{target}:test", "."],
                                cwd=REPO, capture_output=True, text=True, timeout=3600)
        assert result.returncode == 0, result.stderr[-3000:]
