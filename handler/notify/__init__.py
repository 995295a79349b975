"""Notifications: Sentry (messages, exceptions, Crons check-ins) and Telegram.

Contract used by handler.app (implemented in issue 4): every function here is safe to call
when nothing is configured, and none of them raises: a failed notification is logged and
never changes the outcome of a run.
"""
