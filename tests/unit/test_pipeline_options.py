"""The consumer's runner options: in-process locally, Flink with what it needs to ack."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdcflow.config import Runner, Settings
from cdcflow.consumer.pipeline import IN_PROCESS_RUNNER, build_pipeline, pipeline_options
from cdcflow.errors import ConfigError


def test_in_process_runner_ignores_this_process_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["cdcflow", "consume", "--runner=DataflowRunner"])
    options = pipeline_options(Settings()).get_all_options()
    assert options["runner"] == IN_PROCESS_RUNNER
    assert not options["streaming"]


def test_flink_runs_streaming_with_checkpoints_so_bundles_are_finalized(tmp_path: Path) -> None:
    jar = tmp_path / "beam-runners-flink-1.20-job-server-2.77.0.jar"
    jar.write_bytes(b"jar")
    settings = Settings(
        runner=Runner.flink,
        flink_job_server_jar=jar,
        checkpointing_interval_ms=7000,
        parallelism=3,
    )
    # checkpointing_interval belongs to the Java runner: at submission the job server
    # describes its options to the SDK, so here it reads as an unknown option.
    options = pipeline_options(settings).get_all_options(retain_unknown_options=True)
    assert options["runner"] == "FlinkRunner"
    assert options["streaming"] is True
    assert int(options["checkpointing_interval"]) == 7000
    assert options["parallelism"] == 3
    assert options["flink_master"] == "[local]"
    assert options["flink_job_server_jar"] == str(jar)
    assert options["environment_type"] == "LOOPBACK"


def test_flink_without_a_job_server_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CDCFLOW_FLINK_JOB_SERVER_JAR"):
        pipeline_options(Settings(runner=Runner.flink))
    jar = tmp_path / "job-server.jar"
    jar.write_bytes(b"jar")
    settings = Settings(runner=Runner.flink, flink_job_server_jar=jar)
    jar.unlink()  # removed after start-up validation
    with pytest.raises(ConfigError, match="not found"):
        pipeline_options(settings)


def test_flink_against_a_cluster_needs_no_local_jar() -> None:
    options = pipeline_options(
        Settings(runner=Runner.flink, flink_master="flink-jobmanager:8081")
    ).get_all_options()
    assert options["flink_master"] == "flink-jobmanager:8081"


def test_the_pipeline_is_one_chain_from_source_to_dead_letters() -> None:
    pipeline = build_pipeline(Settings())
    labels = [transform.full_label for transform in pipeline.transforms_stack[0].parts]
    assert labels == [
        "ReadFromRabbitMQ",
        "TransformBatch",
        "WriteToClickHouse",
        "PublishDeadLetters",
    ]
