"""Run the real apps under ``flwr.simulation.run_simulation`` with config overrides."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from client_app import app as client_module
from client_app.mods import bandwidth_mod
from fedvit.config import AppConfig
from server_app.federation import RunOutcome, run_federation

# Small and fast: the tiny timm ViT, random init, few examples per step.
FAST = {
    "model-name": "test_vit",
    "img-size": 16,
    "patch-size": 4,
    "weights-path": "",
    "num-server-rounds": 2,
    "local-epochs": 1,
    "batch-size": 32,
    "fraction-evaluate": 0.0,
}


def inject(overrides: dict) -> Callable:
    """A client mod that lends the test's run config to ``context.run_config`` for the
    call (``run_simulation`` gives apps an empty one and refuses a lasting change)."""

    def mod(msg: Message, context: Context, call_next) -> Message:
        original = dict(context.run_config)
        context.run_config.update(overrides)
        try:
            return call_next(msg, context)
        finally:
            context.run_config.clear()
            context.run_config.update(original)

    return mod


def client_app(overrides: dict, extra_mods: Sequence[Callable] = ()) -> ClientApp:
    """The project's ClientApp handlers behind a config-injecting mod."""
    app = ClientApp(mods=[inject(overrides), *extra_mods, bandwidth_mod])
    app.train()(client_module.train)
    app.evaluate()(client_module.evaluate)
    return app


def simulate(overrides: dict, num_nodes: int = 2,
             client: ClientApp | None = None) -> RunOutcome:
    """Run a whole federation in-process; return what the ServerApp produced."""
    cfg = AppConfig.from_run_config(overrides)
    outcome: list[RunOutcome] = []
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        outcome.append(run_federation(grid, cfg))

    run_simulation(
        server_app=server,
        client_app=client or client_app(overrides),
        num_supernodes=num_nodes,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                        "init_args": {"num_cpus": 2}},
    )
    assert outcome, "the ServerApp did not finish"
    return outcome[0]
