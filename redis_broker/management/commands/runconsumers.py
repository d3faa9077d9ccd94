"""``manage.py runconsumers``: run the consumers of every installed app.

Stream groups (``@stream_consumer``), Pub/Sub channels (``@channel_consumer``) and lists
(``@list_consumer``), found in each app's ``consumers`` module.

python manage.py runconsumers                      # all consumers, until SIGTERM/Ctrl-C
python manage.py runconsumers bill orders:mailer   # by name, stream, stream:group, pattern, list
python manage.py runconsumers --burst              # until nothing new or pending is left
python manage.py runconsumers --metrics-port 9108  # GET /metrics, /livez, /readyz
"""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...consumers.runner import ConsumerRunner
from ...exceptions import BrokerUnavailable, ConsumerDefinitionError, ConsumerNameInUse
from ..verbosity import configure_logging


class Command(BaseCommand):
    """Thin shell over :class:`redis_broker.consumers.runner.ConsumerRunner`."""

    help = "Run consumers of streams, channels and lists: read, handle, ack, retry and dead-letter."
    runner_class = ConsumerRunner

    def add_arguments(self, parser: CommandParser) -> None:
        add = parser.add_argument
        add(
            "names",
            nargs="*",
            metavar="NAME",
            help="function name, stream, stream:group, channel pattern or list",
        )
        add("--concurrency", type=int, help="handler calls in flight per consumer")
        add("--consumer-name", help="this worker's name in its groups (default: host-pid)")
        add("--burst", action="store_true", help="exit 0 once nothing new or pending is left")
        add(
            "--no-outbox", dest="relay_outbox", action="store_false", help="do not relay the outbox"
        )
        add("--metrics-port", type=int, help="serve /metrics, /livez and /readyz on this port")
        add("--metrics-host", default="127.0.0.1", help="address to serve them on")

    def handle(self, *args: str, **options: Any) -> None:
        configure_logging(options["verbosity"])
        try:
            runner = self.runner_class(
                options["names"],
                concurrency=options["concurrency"],
                consumer_name=options["consumer_name"],
                burst=options["burst"],
                relay_outbox=options["relay_outbox"],
                echo=self.stdout.write,
                metrics_host=options["metrics_host"],
                metrics_port=options["metrics_port"],
            )
            code = runner.run()
        except (
            BrokerUnavailable,
            ConsumerDefinitionError,
            ConsumerNameInUse,
            LookupError,
            ValueError,
            OSError,  # the metrics port is taken
        ) as exc:
            raise CommandError(str(exc)) from exc
        if code:
            raise CommandError("Stopped before in-flight entries were finished.", returncode=code)
