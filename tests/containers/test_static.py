"""Static checks of the container files: every Dockerfile ends as a non-root user, every
base is pinned by digest (through the BASE build argument's default). Shell scripts are
checked by tests/unit/test_shell_scripts.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((REPO / "images").glob("*.Dockerfile"))


def test_there_are_dockerfiles() -> None:
    names = {p.name for p in DOCKERFILES}
    assert {"workers.Dockerfile", "operator.Dockerfile", "rabbitmq.Dockerfile"} <= names


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_final_stage_runs_as_non_root(path: Path) -> None:
    steps = instructions(path)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    users = [rest for word, rest in steps[last_from:] if word == "USER"]
    assert users, f"{path.name}: the final stage sets no USER (it would run as root)"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"{path.name}: final USER is {users[-1]}"


def test_every_built_target_runs_as_non_root() -> None:
    """`make images` also builds the workers file's `flink` stage: it too ends non-root."""
    steps = instructions(REPO / "images" / "workers.Dockerfile")
    starts = [i for i, (word, _) in enumerate(steps) if word == "FROM"]
    flink = next(i for i in starts if steps[i][1].split()[-1] == "flink")
    end = min([i for i in starts if i > flink] or [len(steps)])
    users = [rest for word, rest in steps[flink:end] if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, users


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_base_is_pinned_by_digest(path: Path) -> None:
    steps = instructions(path)
    args = {}
    for word, rest in steps:
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value.strip('"')
    stages: set[str] = set()
    for word, rest in steps:
        if word != "FROM":
            continue
        parts = rest.split()
        image = parts[0]
        if len(parts) == 3 and parts[1].upper() == "AS":
            stages.add(parts[2])
        if image in stages:
            continue  # an earlier stage of this file
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), image)
        assert re.search(r"@sha256:[0-9a-f]{64}$", resolved), (
            f"{path.name}: FROM {image} resolves to {resolved!r}, not pinned by digest"
        )


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_oci_labels_declared(path: Path) -> None:
    text = path.read_text()
    for key in ("title", "source", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in text, f"{path.name} lacks {key}"


def test_ca_bundle_enters_builds_only_as_a_secret() -> None:
    for path in DOCKERFILES:
        for word, rest in instructions(path):
            assert "ca-certificates.crt" not in rest, f"{path.name}: {word} {rest}"
            if word in {"COPY", "ADD"}:
                assert "cert" not in rest.lower(), f"{path.name}: {word} {rest}"
