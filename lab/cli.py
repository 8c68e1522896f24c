"""``soc lab``: run the simulated site and its attack scenarios, list the scenarios."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import click

from lab.base import LabSite


@click.group("lab")
def lab() -> None:
    """The lab: a simulated plant, meters and sensors on loopback, and attacks on them."""


@lab.command("list")
def lab_list() -> None:
    """The attack scenarios, with their ATT&CK for ICS techniques."""
    from lab.run import load_scenarios

    for scenario in load_scenarios().values():
        click.echo(
            f"{scenario.name:28} {scenario.protocol:7} {','.join(scenario.techniques):18} "
            f"{scenario.description}"
        )


@lab.command("run")
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    default=("all",),
    show_default=True,
    help="A scenario to run after the normal period (repeatable), or 'all'; see `soc lab list`.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds of normal operation before the first attack.",
)
@click.option(
    "--gap",
    type=click.FloatRange(min=0),
    default=3.0,
    show_default=True,
    help="Seconds of normal operation between scenarios.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Directory for capture.pcap, labels.json and values.json.",
)
@click.option("--capture/--no-capture", default=True, help="Capture loopback (needs root).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the simulations.")
def lab_run(
    scenarios: tuple[str, ...],
    duration: float,
    gap: float,
    out: Path,
    capture: bool,
    seed: int,
) -> None:
    """Run the site, then attack it; write the capture and the ground truth into --out."""
    from lab.run import resolve_scenarios, run_lab

    try:
        names = resolve_scenarios(scenarios)
    except KeyError as exc:
        raise click.BadParameter(
            f"unknown scenario {exc.args[0]!r} (see `soc lab list`)", param_hint="--scenario"
        ) from None
    if capture and os.geteuid() != 0:
        click.echo(
            "note: capturing loopback needs root or CAP_NET_RAW; "
            "the lab runs without a capture (labels and values are still written)",
            err=True,
        )
    result = asyncio.run(
        run_lab(
            LabSite(),
            names,
            out,
            normal_s=duration,
            gap_s=gap,
            capture=capture and os.geteuid() == 0,
            seed=seed,
            progress=lambda message: click.echo(message, err=True),
        )
    )
    failed = [label for label in result.labels if label.outcome != "done"]
    click.echo(
        f"{len(result.labels)} scenario(s) run ({len(failed)} failed); {result.capture_note}",
        err=True,
    )
    for name, why in result.failed_services.items():
        click.echo(f"service {name} did not start: {why}", err=True)
    click.echo(f"wrote {out / 'labels.json'} and {out / 'values.json'}", err=True)
    if result.capture is not None:
        click.echo(f"wrote {result.capture}", err=True)
