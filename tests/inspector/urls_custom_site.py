"""A URLconf with a project's own AdminSite, to test that BrokerAdmin registers on it."""

from django.contrib.admin import AdminSite
from django.urls import path

from redis_broker.admin import BrokerAdmin
from redis_broker.models import Broker

site = AdminSite(name="ops")
site.register(Broker, BrokerAdmin)

urlpatterns = [path("ops/", site.urls)]
