"""The README's quick start, run as a new user would: build, clean install, new project.

The package is built into a wheel from this checkout and installed with plain
``pip install`` into a fresh virtualenv that has none of the development requirements,
its dependencies coming from the package index. The settings and commands are taken
from the README's "Use it in your project" section (between ``<!-- quickstart -->``
markers), so the README cannot promise a setup that does not work.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "mysite"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def quickstart_blocks() -> tuple[list[str], str, list[list[str]]]:
    """Return the README quick start's pip command, settings code and manage.py commands."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- quickstart -->\n(.*?)<!-- /quickstart -->", readme, re.DOTALL)
    assert match, "README.md has no <!-- quickstart --> ... <!-- /quickstart --> section"
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", match.group(1), re.DOTALL | re.MULTILINE)
    settings = [code for language, code in blocks if language == "python"]
    assert len(settings) == 1, "the quick start should have exactly one python block"
    shell_lines = [
        shlex.split(line, comments=True)
        for language, code in blocks
        if language != "python"
        for line in code.splitlines()
        if line.strip()
    ]
    pip = [words for words in shell_lines if words[:1] == ["pip"]]
    assert len(pip) == 1, "the quick start should have one pip line"
    commands = [words for words in shell_lines if words[:2] == ["python", "manage.py"]]
    assert len(commands) + 1 == len(shell_lines), f"unexpected lines in {shell_lines}"
    return pip[0], settings[0], commands


def project_settings(settings_code: str, project_settings: str, redis_url: str) -> str:
    """Return the README's settings with the project's own apps and the test's Redis URL."""
    apps = next(
        node.value
        for node in ast.parse(project_settings).body
        if isinstance(node, ast.Assign)
        and any(isinstance(target, ast.Name) and target.id == "INSTALLED_APPS"
                for target in node.targets)
    )  # fmt: skip
    assert isinstance(apps, ast.List)
    existing = ", ".join(ast.unparse(element) for element in apps.elts)
    code, dots = re.subn(r"\.\.\.", existing, settings_code)
    assert dots == 1, "the quick start's INSTALLED_APPS should have one ... for existing apps"
    code, urls = re.subn(r"redis://[^\"']*", redis_url, code)
    assert urls == 1, "the quick start's settings should name one Redis URL"
    return code


def run(args: list[str], *, cwd: Path, env: dict[str, str]) -> str:
    """Run ``args`` and return its stdout, failing the test with its output if it fails."""
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, f"{shlex.join(args)}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_readme_quick_start_works_in_a_clean_virtualenv(
    tmp_path: Path, redis_broker_url: str, redis_client: redis.Redis
) -> None:
    """Tests that pip install plus the README's settings pass check, migrate and publish()."""
    pip_line, settings_code, commands = quickstart_blocks()
    assert pip_line == ["pip", "install", "django-redis-broker"], pip_line
    # No development requirements may leak in: no PYTHONPATH, no outer virtualenv or settings.
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE")
    }
    venv = tmp_path / "venv"
    bin_dir = venv / "bin"
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"

    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dist),
         str(ROOT)], cwd=tmp_path, env=env)  # fmt: skip
    (wheel,) = dist.glob("django_redis_broker-*.whl")
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, env=env)
    python = str(bin_dir / "python")
    run([python, "-m", "pip", "install", "--quiet", str(wheel)], cwd=tmp_path, env=env)

    run([str(bin_dir / "django-admin"), "startproject", PROJECT], cwd=tmp_path, env=env)
    site = tmp_path / PROJECT
    settings_file = site / PROJECT / "settings.py"
    original = settings_file.read_text()
    settings_file.write_text(
        original + "\n" + project_settings(settings_code, original, redis_broker_url)
    )

    checked = run([python, "manage.py", "check"], cwd=site, env=env)
    assert "System check identified no issues" in checked, checked
    output = ""
    for command in commands:
        output = run([python, *command[1:]], cwd=site, env=env)
    entry_id = output.strip().splitlines()[-1]

    entries = redis_client.xrange("orders")
    assert [entry_id] == [entry for entry, _ in entries], output
    assert entries[0][1]["data"] == '{"id":1}'
