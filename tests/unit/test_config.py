"""Settings: URLs, secrets that never leak, environment and .env, validation."""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from cdcflow import broker, logs
from cdcflow.config import Settings, load_settings, settings_env
from cdcflow.errors import ConfigError
from cdcflow.urls import ServiceUrl, scrub


def test_defaults_run_the_local_stack() -> None:
    settings = Settings(_env_file=None)
    assert settings.mongo_uri.where == "127.0.0.1:27017"
    assert settings.amqp_url.scheme == "amqp"
    assert settings.clickhouse_url.scheme == "chdb"
    assert settings.queue_name == "viewing_logs"
    assert settings.failed_queue_name == "viewing_logs.failed"
    assert settings.table_name == "viewing_logs"


def test_environment_overrides_defaults_and_flags_override_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CDCFLOW_MONGO_COLLECTION", "from_env")
    monkeypatch.setenv("CDCFLOW_PREFETCH", "123")
    assert Settings().mongo_collection == "from_env"
    assert Settings().prefetch == 123
    assert (
        load_settings(mongo_collection="from_flag", prefetch=None).mongo_collection == "from_flag"
    )


def test_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("CDCFLOW_EXCHANGE=from_dotenv\n")
    monkeypatch.chdir(tmp_path)
    assert Settings().exchange == "from_dotenv"


@pytest.mark.parametrize(
    "uri",
    [
        "mongodb+srv://app:pw@cluster0.abcde.mongodb.net/?retryWrites=true&w=majority",
        "mongodb://a:b@h1:27017,h2:27017,h3:27017/?replicaSet=rs0&tls=true",
    ],
)
def test_atlas_and_replica_set_uris_are_accepted(uri: str) -> None:
    settings = Settings(mongo_uri=uri)
    assert settings.mongo_uri.reveal() == uri
    assert "pw" not in str(settings.mongo_uri) and ":b@" not in str(settings.mongo_uri)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("mongo_uri", "postgres://x"),
        ("amqp_url", "http://x"),
        ("clickhouse_url", "mysql://x"),
        ("mongo_collection", "bad name"),
        ("log_level", "LOUD"),
    ],
)
def test_wrong_values_are_refused(field: str, value: str) -> None:
    values: dict[str, Any] = {field: value}
    with pytest.raises(ValidationError):
        Settings(**values)


def test_the_mix_must_add_up() -> None:
    with pytest.raises(ValidationError, match="add up to 1"):
        Settings(insert_ratio=0.5, update_ratio=0.5, delete_ratio=0.5)


def test_passwords_never_appear_in_repr_dump_or_str() -> None:
    secret = "s3cr3t-Pa55"
    settings = Settings(
        mongo_uri=f"mongodb://app:{secret}@db:27017/",
        amqp_url=f"amqps://cdc:{secret}@mq:5671/prod",
        clickhouse_url=f"https://loader:{secret}@ch:8443",
    )
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert secret not in text
    assert secret in settings.amqp_url.reveal()
    assert settings.amqp_url.password is not None
    assert settings.amqp_url.password.get_secret_value() == secret


def test_url_encoded_passwords_round_trip_and_are_scrubbed() -> None:
    url = ServiceUrl.parse("amqp://u:p%40ss%2Fword@h:5672/%2F")
    assert url.password is not None and url.password.get_secret_value() == "p@ss/word"
    assert url.reveal() == "amqp://u:p%40ss%2Fword@h:5672/%2F"
    assert scrub("failed: p@ss/word and p%40ss%2Fword") == "failed: *** and ***"


def test_log_lines_are_scrubbed(capsys: pytest.CaptureFixture[str]) -> None:
    Settings(amqp_url="amqp://u:hunter2-secret@h:5672/%2F")
    logs.configure("INFO", "json")
    logging.getLogger("test").warning("connecting with hunter2-secret", extra={"stage": "t"})
    logs.configure("INFO", "text")
    logging.getLogger("test").warning("again hunter2-secret")
    captured = capsys.readouterr().err
    assert "hunter2-secret" not in captured
    assert captured.count("***") == 2


def test_chdb_paths_relative_and_absolute(tmp_path: Path) -> None:
    assert (
        Settings(clickhouse_url=f"chdb://{tmp_path}/wh").clickhouse_url.local_path()
        == tmp_path / "wh"
    )
    relative = Settings(clickhouse_url="chdb://.cdcflow/warehouse").clickhouse_url.local_path()
    assert relative == (Path.cwd() / ".cdcflow" / "warehouse").resolve()


def test_amqps_uses_tls_with_the_given_ca(tmp_path: Path) -> None:
    system_bundle = ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
    ca = tmp_path / "ca.pem"
    ca.write_text(Path(system_bundle).read_text())  # any valid CA bundle loads
    settings = Settings(amqp_url="amqps://u:p@mq.example:5671/%2F", amqp_tls_ca_file=ca)
    params = broker.connection_parameters(settings)
    assert params.ssl_options is not None
    assert params.ssl_options.server_hostname == "mq.example"
    assert params.port == 5671


def test_missing_tls_file_is_a_clear_error_at_worker_start_not_at_validation(
    tmp_path: Path,
) -> None:
    """A spec naming files that exist only inside pods still validates (the operator's
    case); the worker that needs them checks at start."""
    settings = Settings(amqp_url="amqps://u:p@mq:5671/%2F", amqp_tls_ca_file=tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match=r"CDCFLOW_AMQP_TLS_CA_FILE=.*nope\.pem"):
        settings.check_files()
    (tmp_path / "nope.pem").write_text("x")
    settings.check_files()


def test_a_child_loads_the_same_settings_from_settings_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """How workers are started (demo, bench, tests): by environment only, as in Kubernetes."""
    settings = Settings(
        amqp_url="amqps://cdc:p%40ss@mq:5671/prod",
        mongo_collection="views",
        runner="flink",
        flink_master="jm:8081",
        idle_exit_s=2.5,
        clickhouse_tls_verify=False,
        data_dir=tmp_path,
    )
    monkeypatch.chdir(tmp_path)  # no .env here
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    child = Settings()
    assert child.model_dump() == settings.model_dump()
    assert child.amqp_url.reveal() == settings.amqp_url.reveal()


def test_sections_compose_the_flat_settings_without_overlap() -> None:
    """One source of names: every CDCFLOW_* option belongs to exactly one section."""
    from cdcflow.config import SECTIONS

    owners: dict[str, str] = {}
    for section_name, section in SECTIONS.items():
        for name in section.model_fields:
            assert name not in owners, f"{name} in both {owners.get(name)} and {section_name}"
            owners[name] = section_name
    assert set(owners) == set(Settings.model_fields)
    settings = Settings(_env_file=None, exchange="ex", prefetch=7, mongo_collection="c")
    assert settings.broker.exchange == "ex" and settings.consumer.prefetch == 7
    assert settings.source.mongo_collection == "c"
    assert "prefetch" not in type(settings.broker).model_fields


def test_container_env_never_holds_a_secret_value() -> None:
    from cdcflow.config import SecretKeyRef, container_env

    secret = "Tr0ub4dor-s3cret"
    settings = Settings(
        _env_file=None,
        mongo_uri=f"mongodb+srv://app:{secret}@cluster0.example.net/",
        amqp_url=f"amqps://cdc:{secret}@mq:5671/prod",
        clickhouse_url=f"https://loader:{secret}@ch:8443",
        exchange="pipeline_x",
        prefetch=500,
    )
    refs = {
        "mongo_uri": SecretKeyRef("atlas", "uri"),
        "amqp_url": SecretKeyRef("mq", "url"),
        "clickhouse_url": SecretKeyRef("ch", "url"),
    }
    env = container_env([settings.source, settings.broker, settings.warehouse], refs)
    rendered = repr(env)
    assert secret not in rendered and "cdc:" not in rendered
    by_name = {item["name"]: item for item in env}
    assert by_name["CDCFLOW_AMQP_URL"] == {
        "name": "CDCFLOW_AMQP_URL",
        "valueFrom": {"secretKeyRef": {"name": "mq", "key": "url"}},
    }
    assert by_name["CDCFLOW_MONGO_URI"]["valueFrom"]["secretKeyRef"]["name"] == "atlas"
    assert by_name["CDCFLOW_EXCHANGE"] == {"name": "CDCFLOW_EXCHANGE", "value": "pipeline_x"}
    assert "CDCFLOW_PREFETCH" not in by_name, "only the sections passed are rendered"
    # A secret field at its default without a reference is left out ...
    local = container_env([Settings(_env_file=None).broker], {})
    assert all(item["name"] != "CDCFLOW_AMQP_URL" for item in local)
    # ... one set to anything else is refused, never rendered inline nor dropped.
    with pytest.raises(ConfigError, match="no Secret reference names it") as refused:
        container_env([settings.broker], {})
    assert "CDCFLOW_AMQP_URL" in str(refused.value) and secret not in str(refused.value)


SECRET = "S3aled-pw-0042"


def _secret_settings() -> Settings:
    return Settings(
        _env_file=None,
        amqp_url=f"amqp://cdc:{SECRET}@mq:5672/%2F",
        clickhouse_url=f"https://loader:{SECRET}@ch:8443",
        mongo_collection="views",
    )


def test_settings_and_sections_pickle_without_their_passwords() -> None:
    import pickle

    settings = _secret_settings()
    for value in (settings, settings.broker, settings.warehouse):
        data = pickle.dumps(value)
        assert SECRET.encode() not in data
        again = pickle.loads(data)  # same process: the password is found again
        assert again == value
    assert pickle.loads(pickle.dumps(settings)).amqp_url.reveal() == settings.amqp_url.reveal()


def test_elsewhere_the_password_comes_from_that_workers_environment(tmp_path: Path) -> None:
    import pickle
    import subprocess
    import sys

    blob = tmp_path / "settings.pickle"
    blob.write_bytes(pickle.dumps(_secret_settings().broker))
    script = (
        "import pickle, sys; b = pickle.loads(open(sys.argv[1], 'rb').read()); "
        "print(b.amqp_url.reveal())"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("CDCFLOW_")}
    missing = subprocess.run(
        [sys.executable, "-c", script, str(blob)], capture_output=True, text=True, env=env
    )
    assert missing.returncode != 0
    assert "set CDCFLOW_AMQP_URL in this worker's environment" in missing.stderr
    env["CDCFLOW_AMQP_URL"] = f"amqp://cdc:{SECRET}@mq:5672/%2F"
    found = subprocess.run(
        [sys.executable, "-c", script, str(blob)], capture_output=True, text=True, env=env
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == f"amqp://cdc:{SECRET}@mq:5672/%2F"


def _pickled_payloads(graph: Any) -> list[bytes]:
    """Every pickled DoFn of a pipeline proto, uncompressed as Beam's pickler wrote it."""
    import base64
    import bz2
    import zlib

    from apache_beam.portability import common_urns
    from apache_beam.portability.api import beam_runner_api_pb2

    payloads = []
    for transform in graph.components.transforms.values():
        if transform.spec.urn != common_urns.primitives.PAR_DO.urn:
            continue
        pardo = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
        compressed = base64.b64decode(pardo.do_fn.payload)
        try:
            payloads.append(zlib.decompress(compressed))
        except zlib.error:
            payloads.append(bz2.decompress(compressed))
    return payloads


def test_nothing_beam_pickles_for_the_consumer_holds_a_secret() -> None:
    """The pipeline's graph (every DoFn, pickled as Beam ships it) carries no password."""
    from cdcflow.consumer.pipeline import build_pipeline, own_temp_folder

    with own_temp_folder():  # Beam's pipeline folder goes with it
        pipeline = build_pipeline(_secret_settings())
        payloads = _pickled_payloads(pipeline.to_runner_api())
    assert payloads, "the graph has pickled DoFns"
    assert any(b"loader" in payload for payload in payloads), "a DoFn holds the warehouse URL"
    for payload in payloads:
        assert SECRET.encode() not in payload


def test_what_the_consumer_pickles_holds_only_the_sections_it_uses() -> None:
    """DoFns hold the broker, warehouse and consumer sections and derived names: no
    source section (MongoDB URI, database), producer, simulator or tool options."""
    from cdcflow.config import (
        ObservabilitySettings,
        ProducerSettings,
        SimulatorSettings,
        SourceSettings,
        ToolSettings,
    )
    from cdcflow.consumer.pipeline import build_pipeline, own_temp_folder

    def key(name: str) -> bytes:  # a short string as pickle writes it: no substring hits
        return bytes([0x8C, len(name)]) + name.encode()

    settings = _secret_settings().with_overrides(
        mongo_uri="mongodb://source-host-xyz:27017/?directConnection=true"
    )
    with own_temp_folder():
        payloads = _pickled_payloads(build_pipeline(settings).to_runner_api())
    unrelated = [
        *SourceSettings.model_fields,
        *ProducerSettings.model_fields,
        *SimulatorSettings.model_fields,
        *ObservabilitySettings.model_fields,
        *ToolSettings.model_fields,
    ]
    # The consumer's own fields are there (so the check below looks at the right bytes).
    assert any(key("batch_max_messages") in payload for payload in payloads)
    assert any(key("failed_queue_name") in payload for payload in payloads)
    for payload in payloads:
        assert b"source-host-xyz" not in payload
        held = [name for name in unrelated if key(name) in payload]
        assert not held, f"a pickled DoFn holds unrelated settings: {held}"
