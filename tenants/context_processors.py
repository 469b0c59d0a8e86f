from django.http import HttpRequest

from tenants.models import User


def workspaces(request: HttpRequest) -> dict:
    """The top bar's workspace switcher: the workspaces the person belongs to and the one they are in."""
    from tenants.permissions import WorkspaceNotFound
    from tenants.workspaces import membership_current, memberships_for_user

    user = getattr(request, "user", None)
    if not isinstance(user, User) or not user.is_active:
        return {}
    try:
        current = membership_current(request)
    except WorkspaceNotFound:
        return {}
    return {
        "current_membership": current,
        "current_workspace": current.workspace,
        "memberships": memberships_for_user(user),
    }
