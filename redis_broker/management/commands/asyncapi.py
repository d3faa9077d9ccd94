"""``manage.py asyncapi``: write the project's AsyncAPI 3.0.0 document, or check it.

python manage.py asyncapi                                  # JSON on stdout
python manage.py asyncapi --output asyncapi.yaml           # YAML (from the suffix; PyYAML)
python manage.py asyncapi --check docs/asyncapi.json       # exit 1 listing each break

The document is built from the settings and the consumers and publishers of every
installed app (``redis_broker.asyncapi``); ``--check`` compares it with a committed one
(``redis_broker.asyncapi_compat``): a removed channel, operation or message, a new
required field or a changed field type fails, an addition passes.
"""

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import asyncapi
from ...asyncapi_compat import breaking_changes


class Command(BaseCommand):
    """Thin shell over :mod:`redis_broker.asyncapi` and :mod:`redis_broker.asyncapi_compat`."""

    help = "Write the AsyncAPI 3.0.0 document of this project's messages, or check it."

    def add_arguments(self, parser: CommandParser) -> None:
        add = parser.add_argument
        add("--output", metavar="FILE", help="write the document here (default: stdout)")
        add(
            "--format",
            choices=asyncapi.FORMATS,
            help="json or yaml (default: yaml for a .yaml/.yml --output, else json)",
        )
        add(
            "--check",
            metavar="FILE",
            help="compare with this committed document (JSON or YAML); exit 1 on a break",
        )

    def handle(self, *args: str, **options: Any) -> None:
        output, check = options["output"], options["check"]
        fmt = options["format"] or (
            "yaml" if output and output.endswith((".yaml", ".yml")) else "json"
        )
        document = asyncapi.project_document()
        try:
            if output or not check:
                text = asyncapi.dumps(document, fmt)
                if output:
                    Path(output).write_text(text, encoding="utf-8")
                else:
                    self.stdout.write(text, ending="")
            if check:
                self._check(check, document)
        except asyncapi.YamlUnavailable as exc:
            raise CommandError(str(exc)) from exc
        except OSError as exc:
            raise CommandError(f"{exc.filename or output or check}: {exc.strerror}") from exc

    def _check(self, path: str, document: dict[str, Any]) -> None:
        try:
            committed = asyncapi.loads(Path(path).read_text(encoding="utf-8"))
        except ValueError as exc:
            raise CommandError(f"{path} cannot be read as a document: {exc}") from exc
        breaks = breaking_changes(committed, document)
        if breaks:
            lines = "\n".join(f"  - {line}" for line in breaks)
            raise CommandError(
                f"The code breaks {path} in {len(breaks)} way{'s' if len(breaks) > 1 else ''}:"
                f"\n{lines}\nRestore what was removed or changed, or, if the change is "
                f"intended, write the new document: manage.py asyncapi --output {path}"
            )
        self.stderr.write(f"No breaking change against {path}.")
