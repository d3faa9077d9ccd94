"""The one place that reads ``settings.REDIS_BROKER``.

``get_config()`` merges the user's values over ``DEFAULTS`` (one level deep for the
nested groups), validates them with the same code the system checks use, and returns
frozen dataclasses. It is cached and cleared when the setting changes, so tests that
use ``override_settings`` see their values at once.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from .exceptions import ConfigurationError
from .naming import PATTERN_RE

SETTING_NAME = "REDIS_BROKER"

DEFAULTS: dict[str, Any] = {
    # --- Connection -------------------------------------------------------------
    "URL": "redis://127.0.0.1:6379/0",  # redis://, rediss:// (TLS), unix://
    "OPTIONS": {},  # extra keyword arguments for redis-py's connection pool
    "SENTINELS": [],  # [("host", 26379), ...]
    "SENTINEL_SERVICE": None,  # master name, required with SENTINELS
    "SENTINEL_OPTIONS": {},  # keyword arguments for the Sentinel connections themselves
    "CLUSTER": False,  # True: a Redis Cluster; URL names one node (any), STARTUP_NODES more
    "STARTUP_NODES": [],  # [("host", 7000), ...] tried as well as the URL's node
    "WAIT_REPLICAS": 0,  # replicas that must hold a published entry before publish() returns
    "WAIT_TIMEOUT_MS": 1000,  # how long publish() waits for them (WAIT), then WriteRefused
    "SOCKET_TIMEOUT": 5.0,  # seconds; must exceed CONSUMERS["BLOCK_MS"]
    "SOCKET_CONNECT_TIMEOUT": 2.0,  # seconds
    "HEALTH_CHECK_INTERVAL": 15,  # seconds between PINGs on an idle pooled connection
    "RETRIES": 2,  # retries of a command after a connection error, with backoff
    # --- Names and limits ---------------------------------------------------------
    "KEY_PREFIX": "",  # prepended to every stream and channel name
    "STREAM_MAXLEN": 100_000,  # entries, approximate (XADD MAXLEN ~); None keeps all
    "METRICS": True,  # count publishes, requests and consumer outcomes (prometheus_client)
    "METRICS_TOKEN": None,  # bearer token metrics_view accepts (str); None: staff sessions only
    # --- Stream consumers (defaults for every @stream_consumer) -----------------------
    "CONSUMERS": {
        "BATCH_SIZE": 100,  # entries per XREADGROUP
        "BLOCK_MS": 1000,  # milliseconds an idle XREADGROUP waits
        "MAX_DELIVERIES": 5,  # deliveries before an entry is dead-lettered
        "CLAIM_IDLE_MS": 60_000,  # milliseconds before another consumer's entry is reclaimed
        "DEAD_LETTER_SUFFIX": ":dlq",
        "CONCURRENCY": 16,  # handler calls in flight per consumer
        "RETRY_BACKOFF_MS": 1000,  # first retry delay, doubled per delivery
        "RETRY_BACKOFF_MAX_MS": 60_000,  # cap of the retry delay
        "STATUS_INTERVAL": 10.0,  # seconds between status lines of runconsumers
        "SHUTDOWN_GRACE": 30.0,  # seconds in-flight work may take after SIGTERM
        "SLOW_CALL_WARNING": 60.0,  # seconds a handler call runs before it is logged (once)
        "HEARTBEAT_INTERVAL": 5.0,  # seconds between a worker's heartbeats; 3 missed: dead
        "LIVENESS_TIMEOUT": 300.0,  # seconds without progress (work waiting) before /livez fails
    },
    # --- Model events ------------------------------------------------------------
    "MODEL_EVENTS": {},  # "app_label.ModelName" -> {stream, fields, actions, delivery}
    "OUTBOX": {
        "BATCH_SIZE": 100,  # rows relayed per round trip
        "POLL_MS": 500,  # milliseconds between outbox polls when it is empty
    },
    # --- Browser relay -------------------------------------------------------------
    "WEBSOCKET": {
        "AUTHORIZER": "redis_broker.authorization.default_authorizer",
        "PUBLIC_CHANNELS": [],  # patterns any logged-in user may subscribe to
        "BROWSER_PUBLISH_CHANNELS": [],  # patterns logged-in users may publish to
        "MAX_MESSAGE_BYTES": 65_536,  # largest frame accepted from a browser
        "DURABLE_CHANNELS": ["user.*"],  # also kept in a capped stream, replayable
        "DURABLE_MAXLEN": 1000,  # entries kept per durable channel, approximate
        "PUBLISH_RATE": 20,  # publish frames per second per socket
        "SEND_QUEUE_SIZE": 256,  # frames buffered per socket before it is closed
        "PING_INTERVAL": 5.0,  # seconds between watchdog PINGs on the Pub/Sub connection
    },
    # --- The AsyncAPI document (manage.py asyncapi, the inspector's page) --------------
    "ASYNCAPI": {
        "TITLE": "Redis messaging",  # info.title
        "VERSION": "1.0.0",  # info.version: the version of your messages, not of this app
        "DESCRIPTION": "",  # info.description (CommonMark)
    },
}

MODEL_EVENT_KEYS = frozenset({"stream", "fields", "actions", "delivery"})
MODEL_EVENT_ACTIONS = ("created", "updated", "deleted")
MODEL_EVENT_DELIVERIES = ("on_commit", "outbox")
URL_SCHEMES = ("redis", "rediss", "unix")

# Every system-check id the app emits, here and nowhere else; each is documented in the
# README and has its own test. E: a setting is wrong (raised by ``validate`` too).
E_NOT_A_DICT = "redis_broker.E001"
E_UNKNOWN_KEY = "redis_broker.E002"
E_WRONG_TYPE = "redis_broker.E003"
E_BAD_URL = "redis_broker.E004"
E_BAD_VALUE = "redis_broker.E005"
E_UNKNOWN_MODEL = "redis_broker.E006"
E_BAD_PATTERN = "redis_broker.E007"
E_BAD_AUTHORIZER = "redis_broker.E008"
E_BAD_SENTINEL = "redis_broker.E009"
E_TIMEOUT_TOO_SHORT = "redis_broker.E010"
E_UNKNOWN_FIELD = "redis_broker.E011"
E_BAD_CLUSTER = "redis_broker.E012"
# W: deployment warnings (``manage.py check --deploy``, see ``checks.py``).
W_NO_PASSWORD = "redis_broker.W001"
W_NO_TLS = "redis_broker.W002"
W_EVICTION = "redis_broker.W003"
W_UNREACHABLE = "redis_broker.W004"
W_WEAK_METRICS_TOKEN = "redis_broker.W005"
W_CROSS_SLOT = "redis_broker.W006"

#: Shortest METRICS_TOKEN that passes ``check --deploy`` without a warning.
MIN_METRICS_TOKEN_LENGTH = 16


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    """Defaults for every stream consumer (``REDIS_BROKER["CONSUMERS"]``)."""

    batch_size: int
    block_ms: int
    max_deliveries: int
    claim_idle_ms: int
    dead_letter_suffix: str
    concurrency: int
    retry_backoff_ms: int
    retry_backoff_max_ms: int
    status_interval: float
    shutdown_grace: float
    slow_call_warning: float
    heartbeat_interval: float
    liveness_timeout: float


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    """How the outbox relay polls (``REDIS_BROKER["OUTBOX"]``)."""

    batch_size: int
    poll_ms: int


@dataclass(frozen=True, slots=True)
class WebsocketSettings:
    """The browser relay's policy and limits (``REDIS_BROKER["WEBSOCKET"]``)."""

    authorizer_path: str
    public_channels: tuple[str, ...]
    browser_publish_channels: tuple[str, ...]
    max_message_bytes: int
    durable_channels: tuple[str, ...]
    durable_maxlen: int
    publish_rate: int
    send_queue_size: int
    ping_interval: float

    @property
    def authorizer(self) -> Callable[..., Any]:
        """Return the configured authorizer callable (validated when the config was built)."""
        return _import_callable(self.authorizer_path)


@dataclass(frozen=True, slots=True)
class ModelEventSettings:
    """One ``MODEL_EVENTS`` entry, with its defaults filled in."""

    label: str  # "app_label.ModelName" as written by the user
    stream: str
    fields: tuple[str, ...] | None  # None: all concrete fields
    actions: frozenset[str]
    delivery: str


@dataclass(frozen=True, slots=True)
class AsyncapiSettings:
    """The ``info`` of the AsyncAPI document (``REDIS_BROKER["ASYNCAPI"]``)."""

    title: str = DEFAULTS["ASYNCAPI"]["TITLE"]
    version: str = DEFAULTS["ASYNCAPI"]["VERSION"]
    description: str = DEFAULTS["ASYNCAPI"]["DESCRIPTION"]


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """The validated ``REDIS_BROKER`` setting."""

    url: str
    options: Mapping[str, Any]
    sentinels: tuple[tuple[str, int], ...]
    sentinel_service: str | None
    sentinel_options: Mapping[str, Any]
    socket_timeout: float
    socket_connect_timeout: float
    health_check_interval: int
    retries: int
    key_prefix: str
    stream_maxlen: int | None
    consumers: ConsumerSettings
    outbox: OutboxSettings
    websocket: WebsocketSettings
    model_events: Mapping[str, ModelEventSettings] = field(default_factory=dict)
    metrics: bool = True
    metrics_token: str | None = None  # None: metrics_view accepts no bearer token
    cluster: bool = False
    startup_nodes: tuple[tuple[str, int], ...] = ()
    wait_replicas: int = 0
    wait_timeout_ms: int = 1000
    asyncapi: AsyncapiSettings = AsyncapiSettings()


@functools.cache
def _import_callable(path: str) -> Callable[..., Any]:
    obj = import_string(path)
    if not callable(obj):
        raise TypeError(f"{path} is not callable")
    return obj  # type: ignore[no-any-return]


class _Validator:
    """Collect every problem in a raw setting instead of stopping at the first.

    The system checks report the whole list; ``get_config()`` raises the first one.
    """

    def __init__(self) -> None:
        self.errors: list[ConfigurationError] = []

    def error(self, key: str, message: str, check_id: str, hint: str | None = None) -> None:
        self.errors.append(ConfigurationError(key, message, check_id=check_id, hint=hint))

    def merge(self, path: str, raw: Any, defaults: Mapping[str, Any]) -> dict[str, Any]:
        """Overlay ``raw`` on ``defaults``, reporting keys the app does not know."""
        if raw is None:
            return dict(defaults)
        if not isinstance(raw, Mapping):
            self.error(path, f"must be a dict, not {type(raw).__name__}.", E_WRONG_TYPE)
            return dict(defaults)
        merged = dict(defaults)
        for key, value in raw.items():
            if key not in defaults:
                self.error(
                    f"{path}[{key!r}]",
                    "is not a known key.",
                    E_UNKNOWN_KEY,
                    hint=f"Known keys: {', '.join(sorted(defaults))}.",
                )
                continue
            merged[key] = value
        return merged

    def typed(self, key: str, value: Any, types: tuple[type, ...], default: Any) -> Any:
        # bool is an int subclass; a True where a number belongs is a mistake.
        if isinstance(value, bool) and bool not in types:
            ok = False
        else:
            ok = isinstance(value, types)
        if not ok:
            names = " or ".join(t.__name__ for t in types)
            self.error(key, f"must be {names}, not {type(value).__name__}.", E_WRONG_TYPE)
            return default
        return value

    def number(
        self,
        key: str,
        value: Any,
        default: Any,
        *,
        minimum: float = 0,
        integer: bool = True,
    ) -> Any:
        types: tuple[type, ...] = (int,) if integer else (int, float)
        value = self.typed(key, value, types, default)
        if value < minimum:
            self.error(key, f"must be at least {minimum}, not {value}.", E_BAD_VALUE)
            return default
        return value

    def patterns(self, key: str, value: Any) -> tuple[str, ...]:
        value = self.typed(key, value, (list, tuple), [])
        result = []
        for item in value:
            if not isinstance(item, str) or not PATTERN_RE.fullmatch(item):
                self.error(
                    key,
                    f"{item!r} is not a channel pattern.",
                    E_BAD_PATTERN,
                    hint="Use letters, digits and . _ : - with * or ? as wildcards, "
                    'for example "chat.*".',
                )
                continue
            result.append(item)
        return tuple(result)


def _validate_url(v: _Validator, url: Any) -> str:
    default: str = DEFAULTS["URL"]
    url = v.typed("['URL']", url, (str,), default)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        v.error("['URL']", f"{url!r} cannot be parsed: {exc}.", E_BAD_URL)
        return default
    if parts.scheme not in URL_SCHEMES:
        v.error(
            "['URL']",
            f"scheme {parts.scheme!r} is not supported.",
            E_BAD_URL,
            hint='Use "redis://host:6379/0", "rediss://..." for TLS or "unix:///path.sock".',
        )
        return default
    if parts.scheme != "unix" and not parts.hostname:
        v.error("['URL']", f"{url!r} names no host.", E_BAD_URL)
        return default
    if parts.scheme == "unix" and not parts.path:
        v.error("['URL']", f"{url!r} names no socket path.", E_BAD_URL)
        return default
    return str(url)


def _validate_sentinels(v: _Validator, raw: Any, service: Any) -> tuple[tuple[str, int], ...]:
    raw = v.typed("['SENTINELS']", raw, (list, tuple), [])
    sentinels = []
    for item in raw:
        if (
            isinstance(item, list | tuple)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], int)
        ):
            sentinels.append((item[0], item[1]))
        else:
            v.error(
                "['SENTINELS']",
                f"{item!r} is not a (host, port) pair.",
                E_BAD_SENTINEL,
                hint='Write [("sentinel-1", 26379), ("sentinel-2", 26379)].',
            )
    if sentinels and not service:
        v.error(
            "['SENTINEL_SERVICE']",
            "is required when SENTINELS is set.",
            E_BAD_SENTINEL,
            hint='Name the master Sentinel monitors, for example "mymaster".',
        )
    if service is not None and not isinstance(service, str):
        v.error("['SENTINEL_SERVICE']", "must be a str.", E_WRONG_TYPE)
    return tuple(sentinels)


def _validate_consumers(v: _Validator, raw: Any, socket_timeout: float) -> ConsumerSettings:
    d = DEFAULTS["CONSUMERS"]
    c = v.merge("['CONSUMERS']", raw, d)

    def num(key: str, minimum: float = 1, *, integer: bool = True) -> Any:
        return v.number(f"['CONSUMERS'][{key!r}]", c[key], d[key], minimum=minimum, integer=integer)

    settings_ = ConsumerSettings(
        batch_size=num("BATCH_SIZE"),
        block_ms=num("BLOCK_MS"),
        max_deliveries=num("MAX_DELIVERIES"),
        claim_idle_ms=num("CLAIM_IDLE_MS"),
        dead_letter_suffix=v.typed(
            "['CONSUMERS']['DEAD_LETTER_SUFFIX']",
            c["DEAD_LETTER_SUFFIX"],
            (str,),
            d["DEAD_LETTER_SUFFIX"],
        ),
        concurrency=num("CONCURRENCY"),
        retry_backoff_ms=num("RETRY_BACKOFF_MS", 0),
        retry_backoff_max_ms=num("RETRY_BACKOFF_MAX_MS", 0),
        status_interval=num("STATUS_INTERVAL", 0.1, integer=False),
        shutdown_grace=num("SHUTDOWN_GRACE", 0, integer=False),
        slow_call_warning=num("SLOW_CALL_WARNING", 0.1, integer=False),
        heartbeat_interval=num("HEARTBEAT_INTERVAL", 0.1, integer=False),
        liveness_timeout=num("LIVENESS_TIMEOUT", 0.1, integer=False),
    )
    if not settings_.dead_letter_suffix:
        v.error(
            "['CONSUMERS']['DEAD_LETTER_SUFFIX']",
            "must not be empty: dead letters would go back to the stream they came from.",
            E_BAD_VALUE,
        )
    if settings_.block_ms >= socket_timeout * 1000:
        v.error(
            "['CONSUMERS']['BLOCK_MS']",
            f"({settings_.block_ms} ms) must be shorter than SOCKET_TIMEOUT "
            f"({socket_timeout} s), or every idle read would time out.",
            E_TIMEOUT_TOO_SHORT,
            hint="Raise SOCKET_TIMEOUT or lower BLOCK_MS.",
        )
    if settings_.liveness_timeout * 1000 <= settings_.block_ms:
        v.error(
            "['CONSUMERS']['LIVENESS_TIMEOUT']",
            f"({settings_.liveness_timeout} s) must be longer than BLOCK_MS "
            f"({settings_.block_ms} ms): a consumer whose calls run while it waits in a "
            "read would count as stuck.",
            E_TIMEOUT_TOO_SHORT,
            hint="Raise LIVENESS_TIMEOUT (the default is 300 s) or lower BLOCK_MS.",
        )
    return settings_


def _validate_websocket(v: _Validator, raw: Any) -> WebsocketSettings:
    d = DEFAULTS["WEBSOCKET"]
    w = v.merge("['WEBSOCKET']", raw, d)
    path = v.typed("['WEBSOCKET']['AUTHORIZER']", w["AUTHORIZER"], (str,), d["AUTHORIZER"])
    try:
        _import_callable(path)
    except (ImportError, TypeError) as exc:
        v.error(
            "['WEBSOCKET']['AUTHORIZER']",
            f"{path!r} cannot be imported as a callable: {exc}.",
            E_BAD_AUTHORIZER,
            hint="Give the dotted path of a function (user, channel, action) -> bool.",
        )
        path = d["AUTHORIZER"]

    def num(key: str, minimum: float = 1, *, integer: bool = True) -> Any:
        return v.number(f"['WEBSOCKET'][{key!r}]", w[key], d[key], minimum=minimum, integer=integer)

    return WebsocketSettings(
        authorizer_path=path,
        public_channels=v.patterns("['WEBSOCKET']['PUBLIC_CHANNELS']", w["PUBLIC_CHANNELS"]),
        browser_publish_channels=v.patterns(
            "['WEBSOCKET']['BROWSER_PUBLISH_CHANNELS']", w["BROWSER_PUBLISH_CHANNELS"]
        ),
        max_message_bytes=num("MAX_MESSAGE_BYTES", 64),
        durable_channels=v.patterns("['WEBSOCKET']['DURABLE_CHANNELS']", w["DURABLE_CHANNELS"]),
        durable_maxlen=num("DURABLE_MAXLEN"),
        publish_rate=num("PUBLISH_RATE"),
        send_queue_size=num("SEND_QUEUE_SIZE"),
        ping_interval=num("PING_INTERVAL", 0.1, integer=False),
    )


def _validate_model_events(v: _Validator, raw: Any) -> dict[str, ModelEventSettings]:
    from django.apps import apps

    raw = v.typed("['MODEL_EVENTS']", raw, (dict,), {})
    result: dict[str, ModelEventSettings] = {}
    for label, spec in raw.items():
        key = f"['MODEL_EVENTS'][{label!r}]"
        if spec is None:
            spec = {}
        if not isinstance(spec, Mapping):
            v.error(key, f"must be a dict, not {type(spec).__name__}.", E_WRONG_TYPE)
            continue
        unknown = set(spec) - MODEL_EVENT_KEYS
        for name in sorted(unknown):
            v.error(
                f"{key}[{name!r}]",
                "is not a known key.",
                E_UNKNOWN_KEY,
                hint=f"Known keys: {', '.join(sorted(MODEL_EVENT_KEYS))}.",
            )
        model = None
        if not isinstance(label, str) or label.count(".") != 1:
            v.error(key, "must be written as 'app_label.ModelName'.", E_UNKNOWN_MODEL)
            continue
        if apps.ready:
            try:
                model = apps.get_model(label)
            except LookupError:
                v.error(
                    key,
                    f"no installed model is called {label!r}.",
                    E_UNKNOWN_MODEL,
                    hint="Check the app label and the model's class name, and INSTALLED_APPS.",
                )
                continue
        app_label, model_name = label.split(".")
        stream = v.typed(
            f"{key}['stream']",
            spec.get("stream", f"{app_label}.{model_name.lower()}"),
            (str,),
            f"{app_label}.{model_name.lower()}",
        )
        fields = _validate_fields(v, key, model, spec.get("fields"))
        actions = v.typed(
            f"{key}['actions']", spec.get("actions", MODEL_EVENT_ACTIONS), (list, tuple), []
        )
        for action in actions:
            if action not in MODEL_EVENT_ACTIONS:
                v.error(
                    f"{key}['actions']",
                    f"{action!r} is not an action.",
                    E_BAD_VALUE,
                    hint=f"Choose from {', '.join(MODEL_EVENT_ACTIONS)}.",
                )
        delivery = spec.get("delivery", "on_commit")
        if delivery not in MODEL_EVENT_DELIVERIES:
            v.error(
                f"{key}['delivery']",
                f"{delivery!r} is not a delivery mode.",
                E_BAD_VALUE,
                hint='Use "on_commit" (publish after commit, outbox on failure) or "outbox".',
            )
            delivery = "on_commit"
        result[label.lower()] = ModelEventSettings(
            label=label,
            stream=stream,
            fields=fields,
            actions=frozenset(a for a in actions if a in MODEL_EVENT_ACTIONS),
            delivery=delivery,
        )
    return result


def _validate_fields(v: _Validator, key: str, model: Any, fields: Any) -> tuple[str, ...] | None:
    if fields is None:
        return None
    fields = tuple(v.typed(f"{key}['fields']", fields, (list, tuple), []))
    if model is not None:
        concrete = model._meta.concrete_fields
        known = {f.name for f in concrete} | {f.attname for f in concrete}
        for name in fields:
            if name not in known:
                v.error(
                    f"{key}['fields']",
                    f"{model._meta.label} has no concrete field {name!r}.",
                    E_UNKNOWN_FIELD,
                    hint=f"Fields: {', '.join(sorted(known))}.",
                )
    return tuple(str(name) for name in fields)


def validate(raw: Any) -> tuple[BrokerConfig, list[ConfigurationError]]:
    """Build the config from a raw ``REDIS_BROKER`` value and list every problem found.

    Invalid values are replaced by their defaults so that validation can go on and
    report all mistakes at once; callers that need a usable config raise the first error.
    """
    v = _Validator()
    if raw is not None and not isinstance(raw, Mapping):
        v.error("", f"must be a dict, not {type(raw).__name__}.", E_NOT_A_DICT)
        raw = {}
    top = v.merge("", raw or {}, DEFAULTS)
    url = _validate_url(v, top["URL"])
    socket_timeout = v.number(
        "['SOCKET_TIMEOUT']", top["SOCKET_TIMEOUT"], DEFAULTS["SOCKET_TIMEOUT"], integer=False
    )
    maxlen = top["STREAM_MAXLEN"]
    if maxlen is not None:
        maxlen = v.number("['STREAM_MAXLEN']", maxlen, DEFAULTS["STREAM_MAXLEN"], minimum=1)
    prefix = v.typed("['KEY_PREFIX']", top["KEY_PREFIX"], (str,), "")
    if prefix and not PATTERN_RE.fullmatch(prefix):
        v.error(
            "['KEY_PREFIX']",
            f"{prefix!r} has characters that would make keys hard to address.",
            E_BAD_VALUE,
            hint="Use letters, digits and . _ : -, for example 'shop:'.",
        )
    config = BrokerConfig(
        url=url,
        options=v.typed("['OPTIONS']", top["OPTIONS"], (dict,), {}),
        sentinels=_validate_sentinels(v, top["SENTINELS"], top["SENTINEL_SERVICE"]),
        sentinel_service=top["SENTINEL_SERVICE"]
        if isinstance(top["SENTINEL_SERVICE"], str)
        else None,
        sentinel_options=v.typed("['SENTINEL_OPTIONS']", top["SENTINEL_OPTIONS"], (dict,), {}),
        socket_timeout=socket_timeout,
        socket_connect_timeout=v.number(
            "['SOCKET_CONNECT_TIMEOUT']",
            top["SOCKET_CONNECT_TIMEOUT"],
            DEFAULTS["SOCKET_CONNECT_TIMEOUT"],
            integer=False,
        ),
        health_check_interval=v.number(
            "['HEALTH_CHECK_INTERVAL']",
            top["HEALTH_CHECK_INTERVAL"],
            DEFAULTS["HEALTH_CHECK_INTERVAL"],
        ),
        retries=v.number("['RETRIES']", top["RETRIES"], DEFAULTS["RETRIES"]),
        key_prefix=prefix,
        stream_maxlen=maxlen,
        consumers=_validate_consumers(v, top["CONSUMERS"], socket_timeout),
        outbox=_validate_outbox(v, top["OUTBOX"]),
        websocket=_validate_websocket(v, top["WEBSOCKET"]),
        model_events=_validate_model_events(v, top["MODEL_EVENTS"]),
        metrics=v.typed("['METRICS']", top["METRICS"], (bool,), DEFAULTS["METRICS"]),
        metrics_token=_validate_metrics_token(v, top["METRICS_TOKEN"]),
        cluster=v.typed("['CLUSTER']", top["CLUSTER"], (bool,), default=False),
        startup_nodes=_validate_nodes(v, top["STARTUP_NODES"]),
        wait_replicas=v.number(
            "['WAIT_REPLICAS']", top["WAIT_REPLICAS"], DEFAULTS["WAIT_REPLICAS"]
        ),
        wait_timeout_ms=v.number(
            "['WAIT_TIMEOUT_MS']", top["WAIT_TIMEOUT_MS"], DEFAULTS["WAIT_TIMEOUT_MS"], minimum=1
        ),
        asyncapi=_validate_asyncapi(v, top["ASYNCAPI"]),
    )
    if config.cluster:
        _validate_cluster(v, config)
    if "decode_responses" in config.options:
        v.error(
            "['OPTIONS']['decode_responses']",
            "is managed by the app and cannot be set.",
            E_BAD_VALUE,
            hint="Remove it; entries are decoded by redis_broker.wire.",
        )
    return config, v.errors


#: The first redis-py whose cluster clients do all this app needs: asyncio cluster
#: Pub/Sub with sharded channels (the relay, channel consumers) and resubscription of
#: sharded channels after a failover or slot move.
MIN_CLUSTER_REDIS_PY = (8, 1)


def _validate_nodes(v: _Validator, raw: Any) -> tuple[tuple[str, int], ...]:
    raw = v.typed("['STARTUP_NODES']", raw, (list, tuple), [])
    nodes = []
    for item in raw:
        if isinstance(item, str) and item.rpartition(":")[2].isdigit():
            host, _, port = item.rpartition(":")
            item = (host.strip("[]"), int(port))
        if (
            isinstance(item, (list, tuple))
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], int)
        ):
            nodes.append((item[0], item[1]))
        else:
            v.error(
                "['STARTUP_NODES']",
                f"{item!r} is not a (host, port) pair.",
                E_BAD_CLUSTER,
                hint='Write [("10.0.0.2", 7000), "10.0.0.3:7000"].',
            )
    return tuple(nodes)


def _validate_cluster(v: _Validator, config: BrokerConfig) -> None:
    """Refuse what a Redis Cluster cannot do: Sentinel, a unix socket, a database other
    than 0, and a redis-py too old for the cluster clients this app uses."""
    import redis

    version = tuple(int(part) for part in re.findall(r"\d+", redis.__version__)[:2])
    if version < MIN_CLUSTER_REDIS_PY:
        v.error(
            "['CLUSTER']",
            f"needs redis-py 8.1 or newer; {redis.__version__} is installed.",
            E_BAD_CLUSTER,
            hint="redis-py 8.1 is the first with asyncio cluster Pub/Sub and the sharded "
            "Pub/Sub fixes the relay and channel consumers need: pip install 'redis>=8.1'.",
        )
    if config.sentinels:
        v.error(
            "['CLUSTER']",
            "cannot be combined with SENTINELS: a cluster fails over by itself.",
            E_BAD_CLUSTER,
            hint="Remove SENTINELS and SENTINEL_SERVICE, or set CLUSTER to False.",
        )
    parts = urlsplit(config.url)
    if parts.scheme == "unix":
        v.error("['CLUSTER']", "needs a TCP URL, not a unix socket.", E_BAD_CLUSTER)
    elif parts.path.strip("/") not in ("", "0"):
        v.error(
            "['URL']",
            f"names database {parts.path.strip('/')}; a cluster has database 0 only.",
            E_BAD_CLUSTER,
            hint="Drop the database from the URL, or use /0.",
        )


def _validate_metrics_token(v: _Validator, raw: Any) -> str | None:
    if raw is None:
        return None
    token = v.typed("['METRICS_TOKEN']", raw, (str,), None)
    if token is not None and (not token or any(c.isspace() for c in token)):
        # An empty token would let "Authorization: Bearer " through; one with spaces
        # could never be sent in the header as written.
        v.error(
            "['METRICS_TOKEN']",
            "must not be empty or contain whitespace.",
            E_BAD_VALUE,
            hint="Use None to turn bearer tokens off, or a long random string "
            "(python -c 'import secrets; print(secrets.token_urlsafe(32))').",
        )
        return None
    return token


def _validate_outbox(v: _Validator, raw: Any) -> OutboxSettings:
    d = DEFAULTS["OUTBOX"]
    o = v.merge("['OUTBOX']", raw, d)
    return OutboxSettings(
        batch_size=v.number(
            "['OUTBOX']['BATCH_SIZE']", o["BATCH_SIZE"], d["BATCH_SIZE"], minimum=1
        ),
        poll_ms=v.number("['OUTBOX']['POLL_MS']", o["POLL_MS"], d["POLL_MS"], minimum=1),
    )


def _validate_asyncapi(v: _Validator, raw: Any) -> AsyncapiSettings:
    d = DEFAULTS["ASYNCAPI"]
    a = v.merge("['ASYNCAPI']", raw, d)
    values = {}
    for key in ("TITLE", "VERSION", "DESCRIPTION"):
        value = v.typed(f"['ASYNCAPI'][{key!r}]", a[key], (str,), d[key])
        if key != "DESCRIPTION" and not value.strip():
            # AsyncAPI requires both; an empty one would make the document invalid.
            v.error(
                f"['ASYNCAPI'][{key!r}]",
                "must not be empty: the AsyncAPI document requires it.",
                E_BAD_VALUE,
                hint=f"Remove it to use the default, {d[key]!r}, or write your own.",
            )
            value = d[key]
        values[key.lower()] = value
    return AsyncapiSettings(**values)


def raw_setting() -> Any:
    """Return the user's ``REDIS_BROKER`` value, or None when it is absent."""
    return getattr(settings, SETTING_NAME, None)


@functools.cache
def get_config() -> BrokerConfig:
    """Return the validated configuration; raise ``ConfigurationError`` on the first mistake."""
    config, errors = validate(raw_setting())
    if errors:
        raise errors[0]
    return config


@receiver(setting_changed)
def _reset_on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    """Drop the cached config when a test overrides ``REDIS_BROKER``.

    ``connection.py`` drops its clients on the same signal, with a receiver of its own.
    """
    if setting == SETTING_NAME:
        get_config.cache_clear()
