"""Which Ray a command uses, checked before Ray is asked to connect.

The address comes from the spec (``run.ray_address``), else from ``RAY_ADDRESS`` (which
``ray job submit`` sets for its driver), else there is none and a fresh local Ray is started:
explicitly (``address="local"``), because ``ray.init()`` without an address would otherwise join
whatever cluster ``/tmp/ray/ray_current_cluster`` last named, even one long dead.

Left to itself, ``ray.init`` on an address where nothing answers retries for many minutes
without a word, and a malformed address or ``ray://`` without Ray Client end in tracebacks. Here
each becomes one line naming the address and where it came from: the address is parsed, and its
host and port must accept a TCP connection within a bounded wait (``run.ray_connect_timeout_s``,
else ``VBUGS_RAY_CONNECT_TIMEOUT_S``, else 30 s), retried meanwhile so that a head node that is
still starting is waited for.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import socket
import time
from dataclasses import dataclass
from typing import Callable

from vbugs_ray.errors import SpecError, UsageError, cut, one_line, quote
from vbugs_ray.spec import RunSpec

Progress = Callable[[str], None]

TIMEOUT_ENV = "VBUGS_RAY_CONNECT_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 30.0
MAX_TIMEOUT_S = 86_400.0  # a day; beyond it a wait is a mistake (and threading.Timer overflows near 1e300)
ADDRESS_FORMS = "give host:port of the head's GCS (e.g. 10.0.0.5:6379), ray://host:10001, auto or local"


@dataclass(frozen=True)
class RayAddress:
    """An address to join (``text``; None: start a fresh local Ray), where it was given, and as
    what (``given``: 'auto' for an address Ray found)."""

    text: str | None
    from_spec: bool = False
    given: str | None = None

    @property
    def local(self) -> bool:
        return self.text is None

    @property
    def client(self) -> bool:
        return bool(self.text) and self.text.startswith("ray://")

    def error(self, message: str) -> Exception:
        """A one-line error naming the address as the user gave it and where."""
        shown = quote(self.given or self.text)
        if self.from_spec:
            return SpecError("run.ray_address", f"{shown}: {message}")
        return UsageError(f"RAY_ADDRESS={shown}: {message}; or unset RAY_ADDRESS to start a local Ray")

    def __str__(self) -> str:
        origin = "run.ray_address" if self.from_spec else "RAY_ADDRESS"
        return f"{self.text} ({origin}{'=' + self.given if self.given else ''})"


def resolve(run: RunSpec) -> RayAddress:
    """The address a command should use; its form checked (not yet whether anything answers)."""
    if run.ray_address is not None:
        address = RayAddress(run.ray_address.strip(), from_spec=True)
    else:
        address = RayAddress((os.environ.get("RAY_ADDRESS") or "").strip() or None)
    if address.text in (None, "", "local"):
        return RayAddress(None)
    text = address.text
    if "://" in text and not address.client:
        scheme = text.split("://", 1)[0]
        hint = " (a dashboard / job-submission address)" if scheme in ("http", "https") else ""
        raise address.error(f"not a {scheme}:// service{hint}: {ADDRESS_FORMS}")
    if address.client and importlib.util.find_spec("grpc") is None:
        raise address.error("ray:// needs Ray Client: pip install 'ray[client]'; or, on a cluster node or "
                            "under ray job submit, give the GCS address host:6379")
    if text != "auto" and host_port(text) is None:
        raise address.error(f"not a Ray address: {ADDRESS_FORMS}")
    return address


def host_port(text: str) -> tuple[str, int] | None:
    """('10.0.0.5', 6379) from '10.0.0.5:6379', 'ray://host:10001' or '[::1]:6379' (an IPv6
    address in brackets, as Ray reads it); None for anything Ray would not take."""
    rest = text.split("://", 1)[1] if "://" in text else text
    found = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]{1,5})|([A-Za-z0-9._-]+):([0-9]{1,5})", rest)
    if found is None:
        return None
    host, port = (found.group(1), found.group(2)) if found.group(1) else (found.group(3), found.group(4))
    return (host, int(port)) if 0 < int(port) < 65536 else None


def connect_timeout(run: RunSpec) -> float:
    """Seconds to wait for the address to answer: the spec's, else the environment's, else 30."""
    if run.ray_connect_timeout_s is not None:
        return float(run.ray_connect_timeout_s)
    text = os.environ.get(TIMEOUT_ENV)
    if text is None or not text.strip():
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT_S:
        raise UsageError(f"{TIMEOUT_ENV}={quote(text)}: must be a number of seconds > 0 and <= {MAX_TIMEOUT_S:g}, "
                         "e.g. 60")
    return value


def join_deadline(timeout_s: float) -> float:
    """How long ``ray.init`` may take to join once the address answers: twice the wait, at least
    10 s (a short wait, set to fail fast on a dead address, must not cut a healthy join short)."""
    return min(max(2 * timeout_s, 10.0), MAX_TIMEOUT_S)


def latest_cluster(address: RayAddress) -> RayAddress:
    """For 'auto': the address of the cluster Ray would pick (the last `ray start` on this
    machine, else the one running here), found the way Ray's own CLI finds it, with RAY_ADDRESS
    set aside (Ray reads it first, and 'auto' in the spec must not mean the environment's)."""
    from ray._private.services import canonicalize_bootstrap_address_or_die

    saved = os.environ.pop("RAY_ADDRESS", None)
    try:
        found = canonicalize_bootstrap_address_or_die("auto")
    except ConnectionError as exc:
        raise address.error(f"no Ray cluster to join on this machine ({cut(one_line(str(exc)), 90)}); start one "
                            "with ray start --head, or give its address") from None
    finally:
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved
    if "://" in found or host_port(found) is None:
        raise address.error(f"Ray found {quote(found)}, which is not host:port; give the address")
    return RayAddress(found, address.from_spec, given=address.text)


def wait_until_reachable(address: RayAddress, timeout_s: float, progress: Progress,
                         sleep: Callable[[float], None] = time.sleep) -> None:
    """Return once ``address``'s host:port accepts a TCP connection; raise its one-line error if
    none does within ``timeout_s``. An unknown host name fails at once."""
    host, port = host_port(address.text)
    deadline = time.monotonic() + timeout_s
    said = False
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(5.0, left))):
                return
        except socket.gaierror as exc:
            raise address.error(f"cannot resolve host {quote(host)} ({exc.strerror}); check the address") from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
        left = deadline - time.monotonic()
        if left <= 0:
            wait = "run.ray_connect_timeout_s" if address.from_spec else TIMEOUT_ENV
            raise address.error(f"nothing answers at {host}:{port} after {timeout_s:g}s ({reason}); start the "
                                f"cluster, fix the address or wait longer ({wait})") from None
        if not said:
            progress(f"waiting up to {timeout_s:g}s for Ray at {address} ({reason})")
            said = True
        sleep(min(1.0, left))
