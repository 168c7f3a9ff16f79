"""The model, the generated CRD, the RBAC source and the data plane's names agree."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from cdcflow import config
from cdcflow_operator import crd, models, validation
from cdcflow_operator.__main__ import main
from tests.operator_suite.specs import SPECS, body


def test_committed_crd_is_the_generated_one() -> None:
    assert crd.CRD_PATH.read_text() == crd.render(), "crds/pipeline.yaml is stale: run make crds"


def test_crd_check_command_fails_on_a_stale_file(tmp_path, monkeypatch, capsys) -> None:
    stale = tmp_path / "pipeline.yaml"
    stale.write_text(crd.render().replace("minimum: 1", "minimum: 2", 1))
    monkeypatch.setattr(crd, "CRD_PATH", stale)
    assert main(["crd", "--check"]) == 1
    assert "make crds" in capsys.readouterr().err
    assert main(["crd", "--write"]) == 0
    assert main(["crd", "--check"]) == 0


def test_embedded_fields_take_bounds_and_defaults_from_the_data_plane() -> None:
    schema = crd.spec_schema()["properties"]
    window = schema["producer"]["properties"]["publishWindow"]
    field = config.ProducerSettings.model_fields["publish_window"]
    assert window["default"] == field.default
    assert window["description"] == field.description
    assert (window["minimum"], window["maximum"]) == (1, 65535)
    batch = schema["consumer"]["properties"]["batchMaxMessages"]
    assert batch["default"] == config.ConsumerSettings.model_fields["batch_max_messages"].default
    # No default where the data plane computes one (prefetch follows the runner).
    assert config.ConsumerSettings.model_fields["prefetch"].default is None
    assert "default" not in schema["consumer"]["properties"]["prefetch"]
    # Fields that carry passwords are never part of the spec: only Secret references.
    text = crd.render()
    for secret_field in config.SECRET_FIELDS:
        camel = "".join(w.capitalize() if i else w for i, w in enumerate(secret_field.split("_")))
        assert camel not in text


def test_section_validators_run_on_the_spec() -> None:
    pipeline, problems = validation.parse(
        body("p", {"source": {**SPECS["defaults"]["source"], "mongoCollection": "bad-name"}})
    )
    assert pipeline is None
    assert any("letters, digits and underscores" in p for p in problems)


def test_crd_has_printer_columns_subresources_and_short_name() -> None:
    version = crd.build_crd()["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Phase",
        "Ready",
        "Consumers",
        "Queue",
        "Lag",
        "Age",
    ]
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.consumer.replicas"
    assert "status" in version["subresources"]
    assert crd.build_crd()["spec"]["names"]["shortNames"] == ["pl"]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_table_specs_are_valid(name: str) -> None:
    pipeline, problems = validation.parse(body(name, SPECS[name]))
    assert pipeline is not None and not problems
    assert validation.validate(pipeline) == []


def test_operator_package_imports_without_the_data_plane_extras() -> None:
    """The operator imports only the shared contract modules of cdcflow."""
    code = (
        "import sys, cdcflow_operator.handlers, cdcflow_operator.reconciler;"
        "bad=[m for m in sys.modules if m.split('.')[0] in "
        "('apache_beam','chdb','nx_27017','matplotlib','pika','pymongo','pyarrow')"
        " or m in ('cdcflow.broker','cdcflow.consumer','cdcflow.producer')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_model_round_trips_camel_case() -> None:
    spec = models.PipelineSpec.model_validate(SPECS["external-everything"])
    dumped = spec.model_dump(by_alias=True, mode="json", exclude_defaults=True)
    assert models.PipelineSpec.model_validate(dumped) == spec


def test_docs_spec_reference_matches_the_model() -> None:
    from cdcflow_operator import reference

    text = reference.DOC_PATH.read_text()
    assert reference.updated(text) == text, "docs/operator.md is stale: run make crds"
    assert "`spec.scaling.targetMessagesPerReplica`" in text


@pytest.mark.parametrize(
    ("resources", "problem"),
    [
        ({"requests": {"cpu": "lots"}}, "consumer.resources.requests.cpu: 'lots' is not"),
        ({"requests": {"memory": "1Gb"}}, "consumer.resources.requests.memory: '1Gb' is not"),
        ({"limits": {"memory": "x"}}, "consumer.resources.limits.memory: 'x' is not"),
        (
            {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}},
            "memory request 2Gi exceeds its limit 1Gi",
        ),
    ],
)
def test_resources_are_checked_as_quantities_with_or_without_limits(
    resources: dict[str, Any], problem: str
) -> None:
    """A request alone must be checked too: the CRD takes any string, and the server only
    refuses it when the Deployment is applied."""
    spec = {**SPECS["defaults"], "consumer": {"resources": resources}}
    pipeline, problems = validation.parse(body("p", spec))
    assert pipeline is not None and problems == []
    found = validation.validate(pipeline)
    assert len(found) == 1 and problem in found[0], found
