"""``python -m azsim key|fault|cluster|subscribe|events|deliveries|requests``: drive a running simulator.

Every command calls the control API (`azsim.control`) of the simulator named by ``--control-url`` or
``AZSIM_CONTROL_URL`` (``python -m azsim serve`` prints it). Standard library only, so it starts fast.
Exit codes: 0 done, 1 the simulator refused (its one-line error on stderr), 2 usage error or no simulator.

    python -m azsim key new contoso-kv cmk-docdb            # a new version, and its Key Vault event
    python -m azsim key disable contoso-kv cmk-docdb        # the newest version (or name one)
    python -m azsim fault rate 429=0.3 --service arm        # random faults; `fault clear` ends them
    python -m azsim fault inject --fault 503 --count 2 --method PUT   # the next two PUTs fail
    python -m azsim cluster status CLUSTER_ID Inaccessible
    python -m azsim subscribe http://127.0.0.1:8080/api/events
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

CONTROL_SETTING = "AZSIM_CONTROL_URL"
TIMEOUT_S = 60.0  # a subscription waits for the endpoint's validation handshake
COMMANDS = ("key", "fault", "cluster", "subscribe", "events", "deliveries", "requests")


class ControlError(Exception):
    """The simulator answered with an error, or could not be reached."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


class Control:
    """A client of the control API."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")

    def call(self, method: str, path: str, body: object = None) -> Any:  # noqa: ANN401 - JSON
        """One request; the decoded JSON answer, or `ControlError` with the simulator's message."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - the control URL is http on loopback
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:  # noqa: S310
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                doc = json.loads(exc.read() or b"{}")
                message = doc["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = exc.reason
            raise ControlError(f"simulator answered {exc.code}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ControlError(
                f"no simulator at {self.base} ({reason}); start one with `python -m azsim serve`", usage=True
            ) from None


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(f"error: {text}\n")


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _print(doc: object) -> None:
    _out(json.dumps(doc, indent=2))


def _newest(control: Control, vault: str, key: str) -> str:
    versions = control.call("GET", f"/_sim/keys/{_quote(vault)}/{_quote(key)}")
    if not versions:
        raise ControlError(f"key {key} of vault {vault} has no version")
    return str(versions[-1]["version"])


def key_command(control: Control, args: argparse.Namespace) -> None:
    """``key new|disable|enable|list VAULT KEY``."""
    path = f"/_sim/keys/{_quote(args.vault)}/{_quote(args.key)}"
    if args.action == "new":
        body: dict[str, Any] = {"size": args.size, "kty": args.kty, "emit_event": not args.no_event}
        created = control.call("POST", f"{path}/versions", body)
        event = created.get("event") or {}
        _out(f"created {created['key_url']}" + (f" (event {event['id']})" if event else " (no event)"))
        return
    if args.action == "list":
        _print(control.call("GET", path))
        return
    version = args.version or _newest(control, args.vault, args.key)
    control.call("PATCH", f"{path}/{_quote(version)}", {"enabled": args.action == "enable"})
    _out(f"{args.action}d {args.vault}/{args.key}/{version}")


def _rates(pairs: list[str]) -> dict[str, float]:
    rates = {}
    for pair in pairs:
        kind, sep, rate = pair.partition("=")
        try:
            rates[kind] = float(rate) if sep else -1.0
        except ValueError:
            rates[kind] = -1.0
        if rates[kind] < 0:
            raise ControlError(f"fault rate {pair!r}: expected KIND=PROBABILITY, e.g. 429=0.3", usage=True)
    return rates


def fault_command(control: Control, args: argparse.Namespace) -> None:
    """``fault rate|inject|clear``."""
    if args.action == "clear":
        for service in ("arm", "kv"):
            control.call("POST", "/_sim/faults", {"rates": {}, "service": service})
        _out("random faults cleared")
        return
    methods = [m.upper() for m in args.method] if args.method else None
    if args.action == "rate":
        body = {"rates": _rates(args.rates), "service": args.service, "methods": methods}
        control.call("POST", "/_sim/faults", body)
        _out(f"fault rates on {args.service}: {json.dumps(body['rates'])}")
        return
    fault: dict[str, Any] = (
        {"reset": True}
        if args.fault == "reset"
        else {"slow": args.seconds}
        if args.fault == "slow"
        else {"status": int(args.fault), "headers": {"Retry-After": str(args.retry_after)}}
        if args.fault.isdigit()
        else {}
    )
    if not fault:
        raise ControlError(f"fault {args.fault!r}: expected an HTTP status, reset or slow", usage=True)
    body = {
        "service": args.service,
        "method": methods[0] if methods else None,
        "path_contains": args.path_contains,
        "faults": [fault] * args.count,
    }
    control.call("POST", "/_sim/inject", body)
    _out(f"the next {args.count} matching {args.service} request(s) get {args.fault}")


def cluster_command(control: Control, args: argparse.Namespace) -> None:
    """``cluster show|status|fail-next``."""
    if args.action == "show":
        _print(control.call("GET", f"/_sim/cluster?id={_quote(args.cluster_id)}"))
    elif args.action == "status":
        control.call("POST", "/_sim/cluster-status", {"id": args.cluster_id, "status": args.status})
        _out(f"clusterStatus of {args.cluster_id} is now {args.status}")
    else:
        body = {"id": args.cluster_id, "code": args.code, "message": args.message}
        control.call("POST", "/_sim/cluster-fail-next", body)
        _out(f"the next operation on {args.cluster_id} ends Failed ({args.code})")


def subscribe_command(control: Control, args: argparse.Namespace) -> None:
    """``subscribe URL``: an Event Grid subscription, created after the endpoint's validation handshake."""
    body = {"endpoint": args.url, "schema": args.schema, "vault": args.vault}
    if args.retry_delays is not None:
        body["retry_delays"] = [float(d) for d in args.retry_delays.split(",") if d]
    created = control.call("POST", "/_sim/event-subscriptions", body)
    _out(f"subscription {created['name']} ({created['schema']}) delivers Key Vault events to {args.url}")


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the control commands to ``python -m azsim``'s parser."""
    key = commands.add_parser("key", help="create, disable or enable key versions")
    key.add_argument("action", choices=("new", "disable", "enable", "list"))
    key.add_argument("vault", metavar="VAULT")
    key.add_argument("key", metavar="KEY")
    key.add_argument("version", metavar="VERSION", nargs="?", help="disable/enable: default the newest")
    key.add_argument("--size", type=int, default=2048, help="new: RSA key size")
    key.add_argument("--kty", default="RSA", help="new: key type")
    key.add_argument("--no-event", action="store_true", help="new: emit no Key Vault event")

    fault = commands.add_parser("fault", help="inject faults: random rates, the next N requests, or clear")
    fault.add_argument("action", choices=("rate", "inject", "clear"))
    fault.add_argument("rates", nargs="*", metavar="KIND=P", help="rate: e.g. 429=0.3 503=0.1")
    fault.add_argument("--fault", default="429", help="inject: an HTTP status, reset or slow (default 429)")
    fault.add_argument("--count", type=int, default=1, help="inject: how many requests")
    fault.add_argument("--seconds", type=float, default=5.0, help="inject slow: delay")
    fault.add_argument("--retry-after", type=int, default=1, help="inject: Retry-After header value")
    fault.add_argument("--service", choices=("arm", "kv"), default="arm")
    fault.add_argument("--method", action="append", help="only requests with this method (repeatable)")
    fault.add_argument("--path-contains", help="inject: only paths containing this text")

    cluster = commands.add_parser("cluster", help="show a cluster, set its status, fail its next operation")
    cluster.add_argument("action", choices=("show", "status", "fail-next"))
    cluster.add_argument("cluster_id", metavar="CLUSTER_ID")
    cluster.add_argument(
        "status", metavar="STATUS", nargs="?", default="Ready", help="status: e.g. Inaccessible"
    )
    cluster.add_argument("--code", default="InternalServerError", help="fail-next: ARM error code")
    cluster.add_argument("--message", default="Simulated operation failure.", help="fail-next: message")

    subscribe = commands.add_parser("subscribe", help="deliver Key Vault events to a webhook (Event Grid)")
    subscribe.add_argument("url", metavar="URL")
    subscribe.add_argument("--schema", choices=("eventgrid", "cloudevents"), default="eventgrid")
    subscribe.add_argument("--vault", help="only this vault's events")
    subscribe.add_argument("--retry-delays", help="seconds between delivery retries, e.g. 1,5,30")

    events = commands.add_parser("events", help="Key Vault events emitted so far")
    deliveries = commands.add_parser("deliveries", help="webhook subscriptions and their delivery attempts")
    requests = commands.add_parser("requests", help="requests the simulator served (method, path, status)")
    requests.add_argument("--service", choices=("arm", "kv", "identity"))
    requests.add_argument("--method")

    for parser in (key, fault, cluster, subscribe, events, deliveries, requests):
        parser.add_argument("--control-url", help=f"default: ${CONTROL_SETTING}")


def _requests(control: Control, args: argparse.Namespace) -> None:
    for r in control.call("GET", "/_sim/requests"):
        if (args.service is None or r["service"] == args.service) and (
            args.method is None or r["method"] == args.method.upper()
        ):
            _out(f"{r['method']:<6} {r['status']} {r['service']:<8} {r['path']}")


def run(args: argparse.Namespace, env: dict[str, str] | None = None) -> int:
    """Run one control command; return the exit code."""
    env = dict(os.environ) if env is None else env
    base = getattr(args, "control_url", None) or env.get(CONTROL_SETTING, "")
    if not base:
        _err(f"{CONTROL_SETTING} is not set: run `python -m azsim serve` and export what it prints")
        return 2
    control = Control(base)
    handlers: dict[str, Callable[[Control, argparse.Namespace], None]] = {
        "key": key_command,
        "fault": fault_command,
        "cluster": cluster_command,
        "subscribe": subscribe_command,
        "events": lambda c, _: _print(c.call("GET", "/_sim/events")),
        "deliveries": lambda c, _: _print(c.call("GET", "/_sim/event-subscriptions")),
        "requests": _requests,
    }
    try:
        handlers[args.command](control, args)
    except ControlError as exc:
        _err(str(exc))
        return 2 if exc.usage else 1
    return 0
