"""Settings of the demo site, read from the environment with django-environ.

Environment: REDIS_URL, REDIS_CLUSTER (then REDIS_URL names a cluster node), DATABASE_URL
(default: SQLite in var/), SECRET_KEY, DEBUG (off unless ``DEBUG=1``: the demo shows its
own 404 page, as a site would), ALLOWED_HOSTS.
``make demo`` starts a private Redis and sets REDIS_URL when it is unset.
"""

from pathlib import Path

import django
import environ

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"
VAR_DIR.mkdir(exist_ok=True)

env = environ.Env(
    DEBUG=(bool, False),
    ALLOWED_HOSTS=(list, ["127.0.0.1", "localhost"]),
    SECRET_KEY=(str, "demo-only-insecure-key-change-me-0123456789abcdefghijklmnop"),
    REDIS_URL=(str, "redis://127.0.0.1:6379/0"),
    REDIS_CLUSTER=(bool, False),
)

DEBUG = env("DEBUG")
SECRET_KEY = env("SECRET_KEY")
ALLOWED_HOSTS = env("ALLOWED_HOSTS")
REDIS_URL = env("REDIS_URL")
# REDIS_URL names one node of a Redis Cluster when REDIS_CLUSTER is on (make test-cluster).
REDIS_CLUSTER = env("REDIS_CLUSTER")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "redis_broker",
    "demo_site.demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "demo_site.urls"
ASGI_APPLICATION = "demo_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'demo.sqlite3'}")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS: list[dict[str, str]] = []
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

# runconsumers sends the demo's e-mails (demo_site/demo/consumers.py); this backend keeps
# them in the database, where /emails/ shows them.
if django.VERSION >= (6, 1):  # MAILERS replaces EMAIL_BACKEND (deprecated in 6.1)
    MAILERS = {"default": {"BACKEND": "demo_site.demo.mail.OutboxBackend"}}
else:
    EMAIL_BACKEND = "demo_site.demo.mail.OutboxBackend"
DEFAULT_FROM_EMAIL = "demo@example.com"

# The browser relay's control messages (disconnect_user) travel over the Channels layer.
# The Pub/Sub layer keeps one Redis connection per process however many sockets are open;
# the core layer's pool grows with concurrent group_add calls (one per socket).
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": "demo-asgi"},
    }
}

REDIS_BROKER = {
    "URL": REDIS_URL,
    "CLUSTER": REDIS_CLUSTER,
    "KEY_PREFIX": "",
    "CONSUMERS": {"STATUS_INTERVAL": 10.0},
    # Ticket changes go to a stream; demo_site/demo/consumers.py turns them into
    # notifications on the owner's user.<pk> channel.
    "MODEL_EVENTS": {
        "demo.Ticket": {"stream": "demo.tickets", "fields": ["owner", "title", "status"]},
    },
    # Chat pages publish on chat.<room> and announce themselves on presence.<room>; only
    # the server broadcasts on online.<room> (who is there), so pages may not publish there.
    "WEBSOCKET": {
        "PUBLIC_CHANNELS": ["chat.*", "online.*"],
        "BROWSER_PUBLISH_CHANNELS": ["chat.*", "presence.*"],
        "DURABLE_CHANNELS": ["user.*"],
        # The bell replays user.<pk> from the start on every page load and shows the
        # newest 50: a short history keeps that replay small.
        "DURABLE_MAXLEN": 100,
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "redis_broker": {"handlers": ["console"], "level": "INFO"},
        # daphne's access log already prints every request with its status, so a 404 is
        # one line; django.request keeps only errors (a 500 and its traceback).
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
    },
}
