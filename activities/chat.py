"""Chat without a chat system: messages go to the log (the default when no Slack token is configured)."""

from __future__ import annotations

import itertools
import logging

from activities.contracts import MessageRef, Notification

MAX_KEPT = 500


class LogNotifier:
    """A ``ChatNotifier`` that logs ``[channel] text`` and keeps the recent messages in ``sent``.

    Each message gets a ref (a counter); a notification with ``thread_ref`` is logged as an update of that
    message and keeps its ref, the way a chat system edits a message in place.
    """

    def __init__(self, logger_name: str = "unship.chat", keep: int = MAX_KEPT) -> None:
        self.logger = logging.getLogger(logger_name)
        self.sent: list[tuple[Notification, str]] = []
        self._keep = keep
        self._refs = itertools.count(1)

    async def send(self, notification: Notification, text: str) -> MessageRef:
        """Log the already rendered ``text`` to the notification's channel."""
        if notification.thread_ref:
            ref = notification.thread_ref
            self.logger.info("[%s] (update %s) %s", notification.channel, ref, text)
        else:
            ref = str(next(self._refs))
            self.logger.info("[%s] %s", notification.channel, text)
        self.sent.append((notification, text))
        del self.sent[:-self._keep]
        return MessageRef(channel=notification.channel, ref=ref, text=text)
