"""Stream consumers: ``@stream_consumer`` handlers run by ``manage.py runconsumers``."""
