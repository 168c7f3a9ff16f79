"""The consumer's runner options: in-process locally, Flink with what it needs to ack."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

import apache_beam
import pytest

from cdcflow.config import Runner, Settings
from cdcflow.consumer import flink
from cdcflow.consumer.pipeline import (
    FLINK_MAX_BUNDLE_MS,
    IN_PROCESS_RUNNER,
    build_pipeline,
    own_temp_folder,
    pipeline_options,
)
from cdcflow.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_in_process_runner_ignores_this_process_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["cdcflow", "consume", "--runner=DataflowRunner"])
    options = pipeline_options(Settings()).get_all_options()
    assert options["runner"] == IN_PROCESS_RUNNER
    assert not options["streaming"]


def test_flink_runs_streaming_with_checkpoints_so_bundles_are_finalized(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.argv", ["cdcflow", "consume", "--runner=DataflowRunner"])
    settings = Settings(runner=Runner.flink, checkpointing_interval_ms=7000, parallelism=3)
    # checkpointing_interval and max_bundle_time_mills belong to the Java runner: at
    # submission the job server describes them to the SDK, so here they are unknown.
    options = pipeline_options(settings, "127.0.0.1:4711").get_all_options(
        retain_unknown_options=True
    )
    assert options["runner"] == "PortableRunner"
    assert options["job_endpoint"] == "127.0.0.1:4711"
    assert options["streaming"] is True
    assert int(options["checkpointing_interval"]) == 7000
    assert int(options["max_bundle_time_mills"]) == FLINK_MAX_BUNDLE_MS
    assert options["parallelism"] == 3
    assert options["environment_type"] == "LOOPBACK"


def test_flink_options_need_the_job_server_cdcflow_started() -> None:
    with pytest.raises(ConfigError, match="job server"):
        pipeline_options(Settings(runner=Runner.flink))


def _jar(path: Path, version: str | None) -> Path:
    manifest = "Manifest-Version: 1.0\n"
    if version is not None:
        manifest += f"Implementation-Version: {version}\n"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("META-INF/MANIFEST.MF", manifest)
    return path


def test_a_missing_job_server_says_to_run_make_flink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(ConfigError, match="make flink"):
        flink.find_jar(Settings(runner=Runner.flink))
    with pytest.raises(ConfigError, match="CDCFLOW_FLINK_JOB_SERVER_JAR"):
        flink.find_jar(Settings(runner=Runner.flink, flink_job_server_jar=tmp_path / "no.jar"))


def test_the_job_server_must_be_the_sdks_beam_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = _jar(tmp_path / "other.jar", "2.77.0")
    with pytest.raises(ConfigError, match=r"Beam 2\.77\.0.*must match"):
        flink.find_jar(Settings(runner=Runner.flink, flink_job_server_jar=other))
    same = _jar(tmp_path / "same.jar", apache_beam.__version__)
    assert flink.find_jar(Settings(runner=Runner.flink, flink_job_server_jar=same)) == same
    cached = flink.cache_dir().relative_to(Path.home() / ".cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / cached).mkdir(parents=True)
    default = _jar(tmp_path / cached / flink.JAR_NAME, apache_beam.__version__)
    assert flink.find_jar(Settings(runner=Runner.flink)) == default
    not_a_jar = tmp_path / "text.jar"
    not_a_jar.write_text("hello")
    with pytest.raises(ConfigError, match="not a readable jar"):
        flink.find_jar(Settings(runner=Runner.flink, flink_job_server_jar=not_a_jar))


def test_flink_prefetch_covers_the_rate_over_a_checkpoint_interval() -> None:
    """In messages, for the changes read between two acks (rate x (interval + 1 s) plus
    a batch), with messages assumed full (pack_max_changes changes each)."""
    assert Settings().effective_prefetch == 2000
    assert Settings(runner=Runner.flink, prefetch=300).effective_prefetch == 300
    one_each = Settings(
        runner=Runner.flink,
        consume_rate=2000,
        checkpointing_interval_ms=5000,
        batch_max_messages=500,
        pack_max_changes=1,
    )
    assert one_each.effective_prefetch == 2000 * 6 + 500
    assert one_each.with_overrides(checkpointing_interval_ms=1000).effective_prefetch == 4500
    # batch messages: the same changes in a hundredth of the messages
    packed = one_each.with_overrides(consume_rate=100_000, pack_max_changes=100)
    assert packed.effective_prefetch == (100_000 * 6 + 500 + 99) // 100 == 6005
    # the defaults (4,000 changes/s, 5 s, 100 changes a message): 290 needed, floor 2000
    assert Settings(runner=Runner.flink).effective_prefetch == 2000
    assert packed.with_overrides(consume_rate=1e8).effective_prefetch == 65535


def test_the_pipeline_is_one_chain_from_source_to_dead_letters() -> None:
    with own_temp_folder():
        pipeline = build_pipeline(Settings())
    labels = [transform.full_label for transform in pipeline.transforms_stack[0].parts]
    assert labels == [
        "ReadFromRabbitMQ",
        "TransformBatch",
        "WriteToClickHouse",
        "PublishDeadLetters",
    ]


def test_the_consumer_keeps_beams_temporary_folders_in_one_it_removes() -> None:
    """Beam never removes two folders per portable submission, nor a pipeline's
    folder when the process stops inside ``run``: the consumer's own folder holds them."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.transforms import environments

    before = tempfile.gettempdir()
    with own_temp_folder() as folder:
        pipeline = build_pipeline(Settings())
        # what a Flink submission calls
        environments.python_sdk_dependencies(PipelineOptions([]))  # type: ignore[no-untyped-call]
        assert Path(pipeline.local_tempdir).parent == Path(folder)
        leaked = [path for path in Path(folder).iterdir() if path.name.startswith("tmp")]
        assert leaked, "Beam left its staging folder (if it no longer does, drop this)"
    assert not Path(folder).exists()
    assert tempfile.gettempdir() == before


def _path_without(tmp_path: Path, *missing: str) -> str:
    """A PATH with the tools flink-setup.sh uses, minus ``missing``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tools = ["bash", "sed", "awk", "sort", "find", "wc", "du", "cut", "sha256sum", "mktemp"]
    tools += ["cp", "mv", "rm", "mkdir", "date", "dirname", "cat", "head", "tail", "xargs"]
    for tool in [*tools, "java", "mvn"]:
        found = shutil.which(tool)
        if found and tool not in missing:
            (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


@pytest.mark.parametrize(
    ("missing", "message"),
    [(("java", "mvn"), "java not found"), (("mvn",), "mvn not found")],
)
def test_flink_setup_says_what_to_install(
    tmp_path: Path, missing: tuple[str, ...], message: str
) -> None:
    if "java" not in missing and shutil.which("java") is None:
        pytest.skip("java is not installed here")
    env = {**os.environ, "PATH": _path_without(tmp_path, *missing)}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")  # nothing fetched: mvn is needed
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "flink-setup.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert message in done.stderr
    assert "apt-get install" in done.stderr
    assert not (tmp_path / "cache" / "cdcflow" / "flink" / "2.62.0").exists()
