"""One retry helper, shaped like os-brick's ``utils.retry``: a decorator over tenacity that
retries on the given exception types, a fixed number of attempts, exponential back-off.

(The Barbican client has its own deadline-bounded policy, :func:`byok.keys.barbican.retrying`:
there the limit is time, not attempts.)
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import tenacity

LOG = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def retry(exceptions: type[BaseException] | tuple[type[BaseException], ...], *,
          retries: int = 3, interval: float = 1.0, backoff_rate: float = 2.0,
          when: Callable[[BaseException], bool] | None = None) -> Callable[[F], F]:
    """Retry the decorated call on ``exceptions`` (for which ``when(e)``, if given, is true),
    ``retries`` attempts in all; the last exception is re-raised as it was."""
    if retries < 1:
        raise ValueError(f"retries must be at least 1 (got {retries})")

    def decorator(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return tenacity.Retrying(
                retry=tenacity.retry_if_exception(
                    lambda e: isinstance(e, exceptions) and (when is None or when(e))),
                stop=tenacity.stop_after_attempt(retries),
                wait=tenacity.wait_exponential(multiplier=interval, min=0, exp_base=backoff_rate),
                before_sleep=tenacity.before_sleep_log(LOG, logging.DEBUG),
                reraise=True,
            )(fn, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator
