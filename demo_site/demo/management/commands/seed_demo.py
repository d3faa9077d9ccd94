"""Create the demo's users and a ticket for each (idempotent) and print their logins."""

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from demo_site.demo.models import Ticket

DEMO_USERS = [
    # username, password, superuser
    ("admin", "admin", True),
    ("alice", "alice", False),
    ("bob", "bob", False),
]


class Command(BaseCommand):
    """``manage.py seed_demo``: make sure the demo superuser, two users and their tickets exist."""

    help = "Create the demo superuser, two demo users with a ticket each, and print the logins."

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        for username, password, superuser in DEMO_USERS:
            user, _created = User.objects.get_or_create(username=username)
            user.is_staff = superuser
            user.is_superuser = superuser
            user.set_password(password)
            user.save()
            role = "superuser" if superuser else "user"
            self.stdout.write(f"  {role:9} {username} / {password}")
            if not superuser:
                # Something to change on /tickets/ from the first visit on.
                Ticket.objects.get_or_create(owner=user, title=f"{username}'s printer is jammed")
