"""Unverified email addresses that collide with another account's address are dropped.

Before addresses counted only once verified, anyone could attach someone else's address on /accounts/email/ (and a
failed "make primary" could leave it primary on the wrong account). Such a claim is removed when another account
signs in with that address or has verified it; the claimant's own sign-in address (users.email) is never touched.
"""

from django.db import migrations
from django.db.models import Exists, F, OuterRef, Q


def drop_colliding_claims(apps, schema_editor):
    EmailAddress = apps.get_model("account", "EmailAddress")
    User = apps.get_model("tenants", "User")
    someone_else_signs_in_with_it = User.objects.filter(email__iexact=OuterRef("email")).exclude(id=OuterRef("user_id"))
    someone_else_verified_it = EmailAddress.objects.filter(email__iexact=OuterRef("email"), verified=True).exclude(
        user_id=OuterRef("user_id")
    )
    EmailAddress.objects.filter(verified=False).exclude(user__email__iexact=F("email")).filter(
        Q(Exists(someone_else_signs_in_with_it)) | Q(Exists(someone_else_verified_it))
    ).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("tenants", "0002_vector_databases"),
        ("account", "0009_emailaddress_unique_primary_email"),
    ]

    operations = [migrations.RunPython(drop_colliding_claims, migrations.RunPython.noop)]
