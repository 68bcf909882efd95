"""The worker's one door to granted secret values, and the redaction built from them.

Secret values never travel in an activity's input or output (Temporal records both
in history): activities receive the run's granted *names* and resolve the values
here, in the worker process. Two users:

* the egress broker and env injection (`activities.egress_broker`) take values
  through :meth:`SecretValues.value` (a `SecretResolver`);
* every activity that hands something back (tool results, artifacts, model replies,
  errors) redacts it with :meth:`SecretValues.redactor` for the run's names, and the
  worker's log handlers with :meth:`SecretValues.active_redactor`.

Design (why it looks like this):

* **One memory for both**: every value handed out is remembered (per tenant and
  name) and redacted from then on, even once the secret is rotated or deleted: the
  old value may still sit in a file the run wrote. A value is looked up again after
  `ttl_seconds`, so a rotation reaches new calls soon; the values of a name unused
  for `keep_seconds` are forgotten.
* **Fail closed**: a granted secret the store cannot answer for (down, misconfigured)
  fails the activity *before* the tool runs, as a retryable error: output that
  cannot be redacted is never produced. A secret that no longer exists has no value
  to leak, except one handed out earlier, which is remembered.
* **Errors are redacted as they leave** (:func:`redacted_errors`): an exception whose
  message (or cause) holds a value is replaced by an `ApplicationError` of the same
  type name and retry posture, with the value replaced and the cause dropped (Temporal
  records the cause chain in history).

This module must not: return a value anywhere but from `value`, log one, or put one
into an exception.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

from temporalio.exceptions import ApplicationError, CancelledError

from agentrun.redaction import Redactor, UnredactableValue
from secretstore import SecretNotFound, SecretStoreError

SecretLookup = Callable[[str, str], str]
"""(tenant, name) -> the current value; raises the secret store's errors."""

TTL_SECONDS = 30.0
"""How long a looked-up value is used before the store is asked again."""
KEEP_SECONDS = 3600.0
"""How long the values of a name nobody asked for are still redacted from logs."""


class _Entry:
    __slots__ = ("checked", "current", "used", "values")

    def __init__(self) -> None:
        self.values: dict[str, None] = {}  # every value handed out, oldest first
        self.current: str | None = None
        self.checked = float("-inf")
        self.used = 0.0


class SecretValues:
    """Resolves granted secrets by name and builds redactors from what it handed out.

    `lookup` is the secret store's `get(...).reveal()`, in a function so that this
    module never holds a store and tests pass their own; `None`: no store, a run
    granted a secret fails (non-retryable) rather than run unredacted. Thread-safe;
    synchronous (call it from a thread in async code: `asyncio.to_thread`).
    """

    def __init__(
        self,
        lookup: SecretLookup | None,
        *,
        ttl_seconds: float = TTL_SECONDS,
        keep_seconds: float = KEEP_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._ttl = ttl_seconds
        self._keep = keep_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._compiled: dict[tuple[tuple[str, str], ...], Redactor] = {}

    def value(self, tenant: str, name: str) -> str:
        """The value of `name` (a `SecretResolver`): raises `SecretNotFound` when there
        is none, the store's other errors when it cannot answer."""
        value = self._refresh(tenant, name)
        if value is None:
            raise SecretNotFound(f"secret {name!r} does not exist in tenant {tenant!r}")
        return value

    def redactor(self, tenant: str, names: Sequence[str]) -> Redactor:
        """A redactor for every value of `names` handed out or current (empty: none).

        Raises `ApplicationError` (retryable when the store may recover) when a value
        cannot be looked up: nothing may be produced that cannot be redacted.
        """
        if not names:
            return Redactor()
        pairs: list[tuple[str, str]] = []
        for name in dict.fromkeys(names):
            try:
                self._refresh(tenant, name)
            except SecretStoreError as exc:
                raise ApplicationError(
                    f"cannot read granted secret {name!r} to redact output with: "
                    f"{type(exc).__name__}: {exc}",
                    type="SecretUnavailable",
                    non_retryable=not exc.retryable,
                ) from None
            with self._lock:
                entry = self._entries.get((tenant, name))
                pairs += [(name, v) for v in entry.values] if entry else []
        return self._compile(pairs)

    def active_redactor(self) -> Redactor:
        """Every value handed out and used within `keep_seconds` (for the worker's logs)."""
        now = self._clock()
        with self._lock:
            for key in [k for k, e in self._entries.items() if now - e.used > self._keep]:
                del self._entries[key]
            names = [[(name, v) for v in e.values] for (_, name), e in self._entries.items()]
        # Chained, one compiled redactor per secret: a new run's values do not recompile
        # every other run's (compiling is the slow part).
        return Redactor.chain(self._compile(pairs) for pairs in names if pairs)

    def _refresh(self, tenant: str, name: str) -> str | None:
        now = self._clock()
        with self._lock:
            entry = self._entries.setdefault((tenant, name), _Entry())
            entry.used = now
            if now - entry.checked < self._ttl:
                return entry.current
        if self._lookup is None:
            raise ApplicationError(
                f"secret {name!r} is granted to the run but this worker has no secret store",
                type="SecretStoreMissing",
                non_retryable=True,
            )
        try:
            current: str | None = self._lookup(tenant, name)
        except SecretNotFound:
            current = None
        with self._lock:
            entry.checked = now
            entry.current = current
            if current is not None:
                entry.values[current] = None
        return current

    def _compile(self, pairs: Iterable[tuple[str, str]]) -> Redactor:
        key = tuple(sorted(set(pairs)))
        with self._lock:
            found = self._compiled.get(key)
        if found is not None:
            return found
        try:
            redactor = Redactor(key)
        except UnredactableValue as exc:
            raise ApplicationError(
                str(exc), type="SecretUnredactable", non_retryable=True
            ) from None
        with self._lock:
            if len(self._compiled) > 256:  # compiled patterns of runs long gone
                self._compiled.clear()
            self._compiled[key] = redactor
        return redactor


def _texts(exc: BaseException) -> Iterator[str]:
    """The text Temporal would record of `exc`: its message, details and causes."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield str(current)
        if isinstance(current, ApplicationError):
            yield from (repr(d) for d in current.details)
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )


@contextmanager
def redacted_errors(redactor: Redactor) -> Iterator[None]:
    """Re-raise an exception that holds a value as one that does not (see the module)."""
    try:
        yield
    except CancelledError:
        raise  # Temporal's own; its message is Temporal's
    except Exception as exc:
        if not redactor or not any(redactor.found(t) for t in _texts(exc)):
            raise
        causes = " <- ".join(redactor.redact(t) for t in list(_texts(exc))[1:] if t)
        message = redactor.redact(exc.message if isinstance(exc, ApplicationError) else str(exc))
        if isinstance(exc, ApplicationError):
            raise ApplicationError(
                message + (f" (caused by: {causes})" if causes else ""),
                type=exc.type,
                non_retryable=exc.non_retryable,
                next_retry_delay=exc.next_retry_delay,
            ) from None
        raise ApplicationError(
            message + (f" (caused by: {causes})" if causes else ""),  # str() adds the type
            type=type(exc).__name__,
        ) from None
