"""Create the demo's users (idempotent) and print their logins."""

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

DEMO_USERS = [
    # username, password, superuser
    ("admin", "admin", True),
    ("alice", "alice", False),
    ("bob", "bob", False),
]


class Command(BaseCommand):
    """``manage.py seed_demo``: make sure the demo superuser and two users exist."""

    help = "Create the demo superuser and two demo users, and print their logins."

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
