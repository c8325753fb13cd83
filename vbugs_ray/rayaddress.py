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
import socket
import time
from dataclasses import dataclass
from typing import Callable

from vbugs_ray.errors import SpecError, UsageError, quote
from vbugs_ray.spec import RunSpec

Progress = Callable[[str], None]

TIMEOUT_ENV = "VBUGS_RAY_CONNECT_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 30.0
ADDRESS_FORMS = ("give host:port (the head node's GCS, e.g. 10.0.0.5:6379), ray://host:10001 (Ray Client), "
                 "auto or local")


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
        hint = " (that is the dashboard / job-submission address)" if scheme in ("http", "https") else ""
        raise address.error(f"vbugs joins a cluster, not a {scheme}:// service{hint}: {ADDRESS_FORMS}")
    if address.client and importlib.util.find_spec("grpc") is None:
        raise address.error("ray:// connects through Ray Client, which needs pip install 'ray[client]'; "
                            "on a cluster node or under ray job submit, give the GCS address host:6379 instead")
    if text != "auto" and host_port(text) is None:
        raise address.error(f"not a Ray address: {ADDRESS_FORMS}")
    return address


def host_port(text: str) -> tuple[str, int] | None:
    """('10.0.0.5', 6379) from '10.0.0.5:6379', 'ray://host:10001' or '[::1]:6379'; None if malformed."""
    rest = text.split("://", 1)[1] if "://" in text else text
    host, sep, port = rest.rstrip("/").rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c in host for c in " /@?#"):
        return None
    return host, int(port)


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
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"{TIMEOUT_ENV}={quote(text)}: must be a number of seconds > 0, e.g. 60")
    return value


def latest_cluster(address: RayAddress) -> RayAddress:
    """For 'auto': the address of the cluster Ray would pick (the last `ray start` on this
    machine, or the only running one), found the way Ray's own CLI finds it."""
    from ray._private.services import canonicalize_bootstrap_address_or_die

    try:
        found = canonicalize_bootstrap_address_or_die("auto")
    except ConnectionError:
        raise address.error("no running Ray cluster found on this machine; start one with ray start --head, "
                            "or give its address") from None
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
            raise address.error(
                f"nothing answers at {host}:{port} after {timeout_s:g}s ({reason}): start the cluster or fix the "
                f"address; the wait is set by run.ray_connect_timeout_s or {TIMEOUT_ENV}") from None
        if not said:
            progress(f"waiting up to {timeout_s:g}s for Ray at {address} ({reason})")
            said = True
        sleep(min(1.0, left))
