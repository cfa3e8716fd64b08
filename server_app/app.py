"""The ServerApp: read the run config once, then run the federation."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedvit.config.appconfig import AppConfig
from server_app.federation import run_federation

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_federation(grid, AppConfig.from_run_config(context.run_config))
