"""Commands of the policies part: `lienthong audit verify` and `lienthong metering report`."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import orjson

from lienthong.home import home_option
from lienthong.problem import Problem


@click.group("audit")
def audit_group() -> None:
    """The hash-chained audit log of a gateway."""


@audit_group.command("verify")
@click.option("--dir", "directory", required=True, type=click.Path(path_type=Path),
              help="The audit folder of one gateway, e.g. var/gateways/nghean/audit.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def audit_verify(directory: Path, as_json: bool) -> None:
    """Check every chain: exit 0 when intact, 1 when a record was changed, removed or reordered, 2 when only the
    last write of a chain was cut by a crash, 3 when there is nothing to check."""
    from policies.audit_log import verify_dir

    if not directory.is_dir():
        click.echo(f"audit verify: {directory} is not a folder", err=True)
        sys.exit(3)
    report = verify_dir(directory)
    if as_json:
        click.echo(orjson.dumps({"records": report.records, "chains": report.chains, "problems": report.problems,
                                 "torn": report.torn}).decode())  # fmt: skip
    else:
        for line in report.problems:
            click.echo(f"TAMPERED {line}")
        for line in report.torn:
            click.echo(f"TORN     {line}")
        state = "FAILED" if report.problems else ("TORN TAIL" if report.torn else "OK")
        click.echo(f"{state}: {report.records} records in {report.chains} chains under {directory}")
    if report.chains == 0:
        sys.exit(3)
    sys.exit(1 if report.problems else 2 if report.torn else 0)


@click.group("metering")
def metering_group() -> None:
    """Mesh-wide transaction counts (read from the shared Redis)."""


@metering_group.command("report")
@click.option("--from", "start", required=True, help="Start: RFC 3339 date-time or a date (UTC midnight).")
@click.option("--to", "end", required=True, help="End (exclusive), same forms as --from.")
@click.option("--by", "by", default="service,consumer", show_default=True,
              help="Comma-separated: service, consumer, gateway, consumer_gateway, provider_gateway, endpoint, "
                   "outcome (found, no-data, not-permitted, client-error, provider-failure, platform-failure), "
                   "role, hour, day.")  # fmt: skip
@click.option("--redis", "redis_url", default=None,
              help="Redis URL [default: REDIS_URL, else the running Redis of --home].")  # fmt: skip
@home_option("The mesh's folder; its Redis port file is <home>/redis/redis.port.")
@click.option("--all-roles", is_flag=True, help="Count every gateway's own record, not mesh transactions.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def metering_report(
    start: str, end: str, by: str, redis_url: str | None, home: Path, all_roles: bool, as_json: bool
) -> None:
    """How many transactions, grouped by the given dimensions, between --from and --to, and how they split: answers
    (found, no data, not permitted: not errors), client errors, provider failures and platform failures. A call
    refused before its client was known counts under the consumer "(unidentified)"."""
    from rich.console import Console
    from rich.table import Table

    from lienthong.redis_connection import sync_client
    from policies.meter_query import MESH_ROLES, parse_group_by, parse_time, transactions
    from policies.meter_stats import SPLIT

    try:
        group_by = parse_group_by(by, "--by")
        t0, t1 = parse_time(start, "--from"), parse_time(end, "--to")
        url = redis_url or _home_redis(home)
        client = sync_client(url)  # plain, Sentinel or cluster: the counts carry per-gateway hash tags
        result = transactions(client, t0, t1, group_by, None if all_roles else MESH_ROLES)
    except Problem as problem:
        click.echo(f"metering report: {problem.field}: {problem.detail}", err=True)
        sys.exit(2)
    except ValueError as exc:  # a Redis URL it cannot use
        click.echo(f"metering report: --redis: {exc}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(orjson.dumps({"from": t0.isoformat(), "to": t1.isoformat(), "group_by": group_by, **result}))
        return
    # the three answers are not errors; the failures apart by whose they are (policies/outcome.py)
    caption = "; ".join(f"{field.replace('_', ' ')} {result[field]} ({100 * result[f'{rate}_rate']:.2f}%)"
                        for field, rate in SPLIT)  # fmt: skip
    table = Table(title=f"transactions {t0:%Y-%m-%d %H:%M} to {t1:%Y-%m-%d %H:%M} UTC", caption=caption)
    for name in group_by:
        table.add_column(name)
    table.add_column("count", justify="right")
    for group in result["groups"]:
        table.add_row(*[str(group[name]) for name in group_by], str(group["count"]))
    table.add_row(*(["total"] + [""] * (len(group_by) - 1) if group_by else []), str(result["total"]))
    Console().print(table)


def _home_redis(home: Path) -> str:
    """REDIS_URL, else the Redis the home's port file names, if it answers and keeps its data in this very home (a
    port file left by a stopped mesh may name a port another mesh's Redis now holds)."""
    import os

    import redis

    from lienthong.redis_connection import sync_client

    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"]
    data_dir = home / "redis"
    port_file = data_dir / "redis.port"
    if not port_file.is_file():
        raise Problem(400, "invalid-parameter", f"the mesh at {home} has no running Redis: no port file {port_file}; "
                      "start it (lienthong up --home) or pass --redis", field="--home")  # fmt: skip
    url = f"redis://127.0.0.1:{port_file.read_text().strip()}/0"
    try:
        served = sync_client(url).config_get("dir").get("dir")
    except (redis.RedisError, ValueError) as exc:
        why = f"{url} (from {port_file}) does not answer: {exc}"
        raise Problem(400, "invalid-parameter", f"the Redis of the mesh at {home} is not running: {why}; start it "
                      "or pass --redis", field="--home") from None  # fmt: skip
    if served is None or Path(str(served)).resolve() != data_dir.resolve():
        why = f"{port_file} is stale: {url} keeps its data in {served}, another mesh's"
        raise Problem(400, "invalid-parameter", f"the Redis of the mesh at {home} is not running: {why}; start it "
                      "or pass --redis", field="--home")  # fmt: skip
    return url


def register(group: click.Group) -> None:
    """Add this part's commands to the top-level group."""
    group.add_command(audit_group)
    group.add_command(metering_group)
