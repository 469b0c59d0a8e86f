from django.urls import path

from tenants import archive_views, views

urlpatterns = [
    path("database/status", views.database_status, name="database_status"),
    path("database/retry", views.database_retry, name="database_retry"),
    path("account/", views.account, name="account"),
    path("account/delete", views.account_delete, name="account_delete"),
    path("workspace/switch", views.workspace_switch, name="workspace_switch"),
    path("workspace/create", views.workspace_create, name="workspace_create"),
    path("workspace/members", views.workspace_members, name="workspace_members"),
    path("workspace/invite", views.workspace_invite, name="workspace_invite"),
    path("workspace/invitations/<int:invitation_id>/revoke", views.invitation_revoke, name="invitation_revoke"),
    path("workspace/members/<int:membership_id>/role", views.member_role, name="member_role"),
    path("workspace/members/<int:membership_id>/remove", views.member_remove, name="member_remove"),
    path("workspace/transfer", views.ownership_transfer, name="ownership_transfer"),
    path("workspace/leave", views.workspace_leave, name="workspace_leave"),
    path("workspace/delete", views.workspace_delete, name="workspace_delete"),
    path("workspace/backups/now", archive_views.backup_now, name="backup_now"),
    path("workspace/backups/<int:archive_id>/download", archive_views.archive_download, name="archive_download"),
    path("workspace/backups/<int:archive_id>/rewind", archive_views.archive_rewind, name="archive_rewind"),
    path("invitations/<str:token>", views.invitation_accept, name="invitation_accept"),
]
