"""``manage.py asyncapi``: JSON on stdout, YAML that parses, files, and a clear error
without PyYAML."""

from __future__ import annotations

import json
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import CommandError, call_command

from .helpers import asyncapi_errors


def run(*args: str, **options: Any) -> str:
    """Run ``manage.py asyncapi`` in this process; return its stdout."""
    out = StringIO()
    call_command("asyncapi", *args, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


def test_the_default_output_is_valid_json_on_stdout(db: Any) -> None:
    """Tests that the command prints the document as JSON, valid AsyncAPI 3.0.0."""
    document = json.loads(run())
    assert asyncapi_errors(document) == []


def test_the_yaml_output_parses_to_the_same_document(db: Any) -> None:
    """Tests that ``--format yaml`` writes YAML that loads to the JSON output's document."""
    as_yaml = yaml.safe_load(run(format="yaml"))
    assert as_yaml == json.loads(run())
    assert as_yaml["asyncapi"] == "3.0.0"


def test_an_output_files_suffix_chooses_its_format(tmp_path: Path, db: Any) -> None:
    """Tests that ``--output x.yaml`` writes YAML and ``--output x.json`` JSON, and
    that nothing goes to stdout then."""
    assert run(output=str(tmp_path / "doc.yaml")) == ""
    run(output=str(tmp_path / "doc.json"))
    text = (tmp_path / "doc.yaml").read_text()
    assert text.startswith("asyncapi: 3.0.0\n")
    assert yaml.safe_load(text) == json.loads((tmp_path / "doc.json").read_text())


def test_yaml_without_pyyaml_is_a_clear_command_error(
    monkeypatch: pytest.MonkeyPatch, db: Any
) -> None:
    """Tests that asking for YAML where PyYAML cannot be imported fails with a
    CommandError saying what to install, while JSON still works."""
    monkeypatch.setitem(sys.modules, "yaml", None)  # makes ``import yaml`` raise ImportError
    with pytest.raises(CommandError, match=r"django-redis-broker\[asyncapi\]"):
        run(format="yaml")
    assert json.loads(run())["asyncapi"] == "3.0.0"


def test_an_output_path_that_cannot_be_written_is_a_command_error(tmp_path: Path, db: Any) -> None:
    """Tests that an output in a missing folder is a CommandError naming it."""
    with pytest.raises(CommandError, match="No such file or directory"):
        run(output=str(tmp_path / "missing" / "doc.json"))
