"""URLs of the demo site."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.staticfiles.views import serve
from django.templatetags.static import static
from django.urls import path, re_path
from django.views.generic import RedirectView

from demo_site.demo import views
from redis_broker.metrics import metrics_view

urlpatterns = [
    path("", views.home, name="home"),
    path("chat/<str:room>/", views.chat, name="chat"),
    path("tickets/", views.tickets, name="tickets"),
    path("tickets/new/", views.create_ticket, name="create_ticket"),
    path("tickets/<int:pk>/", views.update_ticket, name="update_ticket"),
    path("emails/", views.emails, name="emails"),
    path("quote/", views.quote, name="quote"),
    path("login/", auth_views.LoginView.as_view(template_name="login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    # Scrape-time figures read from Redis: staff, or Authorization: Bearer <METRICS_TOKEN>.
    path("broker/metrics", metrics_view, name="redis_broker_metrics"),
    # The demo runs under plain daphne, which serves no static files; a real site lets
    # its web server or WhiteNoise do this. ``insecure`` serves them with DEBUG off too.
    re_path(r"^static/(?P<path>.*)$", serve, {"insecure": True}),
    # Pages link the SVG icon; this answers clients that ask for the old default path.
    path("favicon.ico", RedirectView.as_view(url=static("demo/favicon.svg"), permanent=True)),
]
