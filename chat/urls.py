from django.urls import path

from chat import views

urlpatterns = [
    path("", views.chat_all, name="chat"),
    path("stream", views.chat_stream, name="chat_stream"),
    path("conversations/<str:conversation_id>/delete", views.conversation_delete, name="conversation_delete"),
    path("conversations/<str:conversation_id>/share", views.conversation_share, name="conversation_share"),
]
