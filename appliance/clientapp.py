"""ClientApp: the code a data scientist ships to run at each site.

Handlers are registered per message type with ``@app.train()``, ``@app.evaluate()``
and ``@app.query()`` (optionally with an action, ``@app.train("secagg")`` handles
``train.secagg``). Mods wrap every handler call, first mod outermost.

Whatever a handler does, calling the app returns a reply and never raises: an
exception becomes an error reply (code and reason, no traceback unless the host
asks for one), as does a handler that returns something other than a reply to the
message it was given.
"""

from __future__ import annotations

import enum
import traceback
from collections.abc import Callable, Sequence

from appliance.context import Context
from appliance.message import Error, ErrorCode, Message, MessageType, check_message_type

__all__ = ["CallNext", "ClientApp", "ErrorDetail", "Handler", "Mod", "wrap_with_mods"]

Handler = Callable[[Message, Context], Message]
CallNext = Handler
Mod = Callable[[Message, Context, CallNext], Message]
MAX_ERROR_MESSAGE_CHARS = 500


class ErrorDetail(enum.Enum):
    """How much of a handler's exception an error reply may reveal."""

    TYPE = "type"  #: only the exception's class name
    MESSAGE = "message"  #: class name and message (truncated)
    TRACEBACK = "traceback"  #: the full traceback (only where the site allows it)


def _describe(exc: BaseException, detail: ErrorDetail) -> str:
    if detail is ErrorDetail.TRACEBACK:
        return "".join(traceback.format_exception(exc))
    if detail is ErrorDetail.TYPE:
        return type(exc).__name__
    text = str(exc)
    if len(text) > MAX_ERROR_MESSAGE_CHARS:
        text = text[:MAX_ERROR_MESSAGE_CHARS] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ClientApp:
    """The site-side half of a federated app.

    Args:
        mods: wrap every handler call, first mod outermost.

    Example:
        >>> app = ClientApp()
        >>> @app.train()
        ... def train(msg: Message, ctx: Context) -> Message:
        ...     return Message(msg.content, reply_to=msg)
    """

    def __init__(self, mods: Sequence[Mod] | None = None) -> None:
        self._handlers: dict[str, Handler] = {}
        self.mods: list[Mod] = list(mods or [])

    def _register(self, kind: MessageType, action: str | None) -> Callable[[Handler], Handler]:
        message_type = check_message_type(f"{kind.value}.{action}" if action else kind.value)

        def decorator(handler: Handler) -> Handler:
            if message_type in self._handlers:
                raise ValueError(f"ClientApp already has a handler for {message_type!r}")
            self._handlers[message_type] = handler
            return handler

        return decorator

    def train(self, action: str | None = None) -> Callable[[Handler], Handler]:
        """Register the handler for ``train`` (or ``train.<action>``) messages."""
        return self._register(MessageType.TRAIN, action)

    def evaluate(self, action: str | None = None) -> Callable[[Handler], Handler]:
        """Register the handler for ``evaluate`` (or ``evaluate.<action>``) messages."""
        return self._register(MessageType.EVALUATE, action)

    def query(self, action: str | None = None) -> Callable[[Handler], Handler]:
        """Register the handler for ``query`` (or ``query.<action>``) messages."""
        return self._register(MessageType.QUERY, action)

    @property
    def message_types(self) -> frozenset[str]:
        """The message types this app handles."""
        return frozenset(self._handlers)

    def _dispatch(self, message: Message, context: Context) -> Message:
        message_type = message.metadata.message_type
        handler = self._handlers.get(message_type)
        if handler is None:
            known = ", ".join(sorted(self._handlers)) or "none"
            return Message(
                Error(
                    ErrorCode.UNKNOWN_MESSAGE_TYPE,
                    f"ClientApp has no handler for {message_type!r} (handles: {known})",
                ),
                reply_to=message,
            )
        return handler(message, context)

    def __call__(
        self,
        message: Message,
        context: Context,
        *,
        mods: Sequence[Mod] = (),
        error_detail: ErrorDetail = ErrorDetail.MESSAGE,
    ) -> Message:
        """Handle ``message`` and return the reply; never raises for app errors.

        Args:
            message: the incoming message.
            context: the node's context for this run (its ``state`` persists).
            mods: extra mods the host wraps outside the app's own (e.g. a site
                policy's privacy mods), first outermost.
            error_detail: how much of an exception the error reply reveals.
        """
        chain = wrap_with_mods([*mods, *self.mods], self._dispatch)
        try:
            reply = chain(message, context)
        except Exception as exc:
            return Message(
                Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, _describe(exc, error_detail)),
                reply_to=message,
            )
        return _checked_reply(message, reply)


def wrap_with_mods(mods: Sequence[Mod], call: CallNext) -> CallNext:
    """``call`` wrapped by ``mods``, the first mod outermost."""
    chain = call
    for mod in reversed(mods):
        chain = _bind(mod, chain)
    return chain


def _bind(mod: Mod, call_next: CallNext) -> CallNext:
    def wrapped(message: Message, context: Context) -> Message:
        return mod(message, context, call_next)

    return wrapped


def _checked_reply(request: Message, reply: object) -> Message:
    """The reply if it answers ``request``, else an ``INVALID_REPLY`` error reply."""
    if not isinstance(reply, Message):
        reason = f"handler returned {type(reply).__name__}, expected a Message"
    elif reply.metadata.reply_to_message_id != request.metadata.message_id:
        reason = "handler returned a Message that is not a reply to the one it was given"
    else:
        return reply
    return Message(Error(ErrorCode.INVALID_REPLY, reason), reply_to=request)
