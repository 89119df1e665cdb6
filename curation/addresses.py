"""Which addresses a crawler may connect to (only globally routable unicast ones), and finding
them within a deadline.

An attacker's URL list (or a redirect, or a DNS record) can name an internal service in many
spellings; they all resolve to an address, and the address is what is checked here. The fetcher
connects to the very address it checked, never to a second lookup of the name (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

# Ranges that carry an IPv4 address inside an IPv6 one: the IPv4 address is what is reached.
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d
# not global, though Python 3.11's is_global says otherwise
_NOT_GLOBAL = (ipaddress.ip_network("192.0.0.0/24"),)


def is_forbidden_address(address: str) -> bool:
    """Every address that is not globally routable unicast, whatever its spelling.

    Private, loopback, link-local, carrier-grade NAT (100.64.0.0/10, cloud metadata such as
    100.100.100.200), multicast, reserved, unspecified, and IPv6 forms that embed a forbidden
    IPv4 address (IPv4-mapped, IPv4-compatible, 6to4, NAT64); Teredo is refused.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:  # what a connection to it reaches
            return is_forbidden_address(str(embedded))
    return (
        not ip.is_global
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or any(ip in net for net in _NOT_GLOBAL if net.version == ip.version)
    )


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped, IPv4-compatible, 6to4 or NAT64 address stands for.

    (Teredo addresses are not global: refused whatever client address they carry.)
    """
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if any(ip in net for net in _NAT64) or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


# Lookups running at once in this process. A lookup that hangs holds its thread until the system
# resolver gives up (tens of seconds); the fetch that asked has long returned by then.
_LOOKUPS = threading.BoundedSemaphore(64)


def resolve(host: str, port: int, timeout: float) -> list[str]:
    """The addresses of ``host`` (IPv4 and IPv6, in resolver order), within ``timeout`` seconds.

    ``socket.getaddrinfo`` cannot be interrupted and a hostile or broken name server can hold it
    far longer than a fetch's deadline, so it runs on a daemon thread that is abandoned once the
    time is up. Raises ``TimeoutError`` then, ``socket.gaierror`` or ``UnicodeError`` (a name
    IDNA cannot encode) when the name does not resolve.

    An address in its standard spelling is its own answer, without a lookup or a thread (the
    per-fetch thread and getaddrinfo cost ~4% of a fetch task's CPU); any other spelling
    (``127.1``, ``0x7f.0.0.1``) goes through the resolver, which says what it stands for.
    """
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    start = time.monotonic()
    if not _LOOKUPS.acquire(timeout=max(0.0, timeout)):
        raise TimeoutError(f"no free resolver thread within {timeout:.1f}s")
    done = threading.Event()
    outcome: dict = {}

    def lookup() -> None:
        try:
            outcome["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except BaseException as exc:  # handed to the caller, whatever it is
            outcome["error"] = exc
        finally:
            _LOOKUPS.release()
            done.set()

    threading.Thread(target=lookup, name="resolve", daemon=True).start()
    if not done.wait(max(0.0, timeout - (time.monotonic() - start))):
        raise TimeoutError(f"resolving {host!r} took over {timeout:.1f}s")
    if "error" in outcome:
        raise outcome["error"]
    return [info[4][0] for info in outcome["infos"]]
