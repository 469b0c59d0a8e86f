#!/usr/bin/env python
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django
    from django.core.management import execute_from_command_line

    from config.embedded_main_database import main_database_migrate_if_needed

    django.setup()
    main_database_migrate_if_needed(sys.argv[1] if len(sys.argv) > 1 else None)
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
