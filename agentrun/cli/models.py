"""The ``models`` command: the model table, and the model each agent workstream would get."""

from __future__ import annotations

import click

from agentrun.cli.common import handle_errors, state_dir_option


@click.command()
@click.argument("source", default="waves", required=False)
@state_dir_option
@handle_errors
def models(source, state_dir) -> None:
    """List model presets and entries, and the model each agent workstream in SOURCE would get."""
    from agentrun.views.models import model_table
    settings, rows = model_table(source)
    click.echo(f"{'name':<16} {'provider id':<44} {'window':>9} {'edits':<6} {'$/Mtok in':>9} {'$/Mtok out':>10}  key")
    for m in settings:
        price = lambda v: "unknown" if v is None else f"{v:.2f}"
        click.echo(f"{m.name:<16} {m.id:<44} {m.context_window:>9} {m.edit_format:<6} "
                   f"{price(m.input_cost_per_mtok):>9} {price(m.output_cost_per_mtok):>10}  {m.api_key_env or '-'}")
    if rows:
        click.echo("")
        click.echo(f"{'workstream':<32} {'model':<16} {'why':<22} fallbacks")
        for ws_id, name, why, fallbacks in rows:
            click.echo(f"{ws_id:<32} {name:<16} {why:<22} {', '.join(fallbacks) or '-'}")
