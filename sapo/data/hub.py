"""Whether the Hugging Face hub can be used, decided once and quickly, before a library tries it.

Left to themselves, transformers and datasets retry an unreachable hub for about a minute and then fail in a
chain of tracebacks. The model and data loaders call :func:`hub_problem` first: offline mode
(``HF_HUB_OFFLINE=1``) means the hub is not tried at all; otherwise one HEAD request to
``huggingface_hub.constants.ENDPOINT`` (so ``HF_ENDPOINT`` applies), through huggingface_hub's own HTTP session
(its proxies and certificates), must answer within :data:`HUB_CHECK_TIMEOUT` seconds. Any HTTP answer counts
as reachable; the outcome is remembered per endpoint for :data:`HUB_CHECK_TTL` seconds.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "HUB_CHECK_TIMEOUT",
    "HUB_CHECK_TTL",
    "HubUnavailableError",
    "hub_endpoint",
    "hub_offline",
    "hub_problem",
    "hub_unavailable_message",
    "offline_mode",
]

#: seconds the reachability check waits for the hub's answer
HUB_CHECK_TIMEOUT = 3.0
#: seconds a check's outcome is remembered (per endpoint)
HUB_CHECK_TTL = 60.0

_TRUE = {"1", "ON", "YES", "TRUE"}
_checked: dict[str, tuple[float, str | None]] = {}
_lock = threading.Lock()


class HubUnavailableError(ConnectionError):
    """A name was taken for a hub id, and the hub cannot be used (offline mode, or no answer)."""


def hub_endpoint() -> str:
    """The hub's address as huggingface_hub uses it (``HF_ENDPOINT``, read when it was imported)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_offline() -> bool:
    """Whether offline mode is set: huggingface_hub's flag (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` when
    it was imported), or ``HF_HUB_OFFLINE`` in the environment now."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def hub_problem(timeout: float = HUB_CHECK_TIMEOUT) -> str | None:
    """Why the hub cannot be used (``"offline mode is set ..."``, ``"the Hugging Face hub at URL cannot be
    reached (...)"``), or ``None`` when it answers. Makes no connection in offline mode."""
    if hub_offline():
        return "offline mode is set (HF_HUB_OFFLINE=1), so the hub is not tried"
    endpoint = hub_endpoint()
    now = time.monotonic()
    with _lock:
        cached = _checked.get(endpoint)
        if cached is not None and now - cached[0] < HUB_CHECK_TTL:
            return cached[1]
    reason = _probe(endpoint, timeout)
    problem = None if reason is None else f"the Hugging Face hub at {endpoint} cannot be reached ({reason})"
    with _lock:
        _checked[endpoint] = (time.monotonic(), problem)
    return problem


@contextmanager
def offline_mode() -> Iterator[None]:
    """huggingface_hub's offline mode while the block runs (every hub request raises at once instead of being
    sent and retried), for reading a copy from the local cache when the hub cannot be used: transformers
    does not pass ``local_files_only`` to every lookup it makes (the adapter-config lookup of
    ``AutoModelForCausalLM.from_pretrained``, for one). Process-wide while it lasts."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def hub_unavailable_message(
    name: str,
    problem: str,
    *,
    kind: str,
    local: str,
    argument: str | None = None,
    note: str = "",
    hint: str = "",
) -> str:
    """The one message for a hub id that cannot be read: which name was taken for a hub id, why the hub
    cannot be used (``problem``, then ``note``), and what local path to pass instead (naming the argument
    when known), then ``hint``."""
    as_argument = f" as {argument}" if argument else ""
    return (
        f"{name!r} was taken for a hub {kind} id, but {problem}{note}; "
        f"pass a local path{as_argument} instead ({local}){hint}"
    )


def _probe(endpoint: str, timeout: float) -> str | None:
    """One HEAD request to ``endpoint`` in a daemon thread (so a slow name lookup cannot hold the caller);
    ``None`` on any HTTP answer, else what went wrong."""
    outcome: dict[str, BaseException | None] = {}

    def run() -> None:
        try:
            from huggingface_hub.utils import get_session

            get_session().head(endpoint, timeout=timeout)
        except Exception as error:  # noqa: BLE001 - any failure means "not reachable"
            outcome["error"] = error
        else:
            outcome["error"] = None

    thread = threading.Thread(target=run, name="sapo-hub-check", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if "error" not in outcome:
        return f"no answer within {timeout:g} s"
    error = outcome["error"]
    if error is None:
        return None
    text = " ".join(str(error).split())[:200]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
