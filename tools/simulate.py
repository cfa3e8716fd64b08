"""Run the project's apps in-process under ``flwr.simulation.run_simulation``.

``run_simulation`` hands apps an empty run config (and refuses a lasting change to it), so
the config is lent to each ClientApp call by a mod, and the ServerApp is given the
validated config directly. Used by the experiments command and the tests.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from logging import WARNING

import ray
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation
from flwr.supercore.exit.exit_handler import trigger_exit_handlers

from client_app import app as client_module
from client_app.mods import WIRE_MODS
from fedvit.config.appconfig import AppConfig
from server_app.federation import RunOutcome, run_federation


def lend_run_config(overrides: dict) -> Callable:
    """A client mod that lends ``overrides`` to ``context.run_config`` for one call."""

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
    """The project's ClientApp handlers and mods, behind the config-lending mod."""
    app = ClientApp(mods=[lend_run_config(overrides), *extra_mods, *WIRE_MODS])
    app.train()(client_module.train)
    app.evaluate()(client_module.evaluate)
    app.query()(client_module.query)
    return app


def start_ray(cpus: int, attempts: int = 3) -> None:
    """Start Ray for ``run_simulation``, which uses a running Ray and shuts it down at the
    end. Ray 2.55 gives a new raylet a fixed 30 s to register, which a loaded machine can
    miss; a failed start is retried instead of failing the run."""
    pythonpath = os.pathsep.join(sys.path)  # the workers import the apps' modules
    for attempt in range(1, attempts + 1):
        try:
            ray.init(num_cpus=cpus, include_dashboard=False,
                     runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
            return
        except Exception as err:  # Ray raises a bare Exception on a startup timeout
            ray.shutdown()
            if attempt == attempts:
                raise
            log(WARNING, "fedvit: Ray did not start (%s: %s); attempt %d of %d",
                type(err).__name__, err, attempt + 1, attempts)


def simulate(overrides: dict, num_nodes: int = 2, client: ClientApp | None = None,
             cpus: int = 2, grid_wrapper: Callable[[Grid], Grid] | None = None) -> RunOutcome:
    """Run a whole federation in-process; return what the ServerApp produced.

    ``grid_wrapper`` wraps the simulation's Grid (fault injection in tests). An error of the
    ServerApp is raised again here; ``stopped`` returns it instead.
    """
    outcome = _run(overrides, num_nodes, client, cpus, grid_wrapper)
    if isinstance(outcome, BaseException):
        if isinstance(outcome, Exception):
            raise outcome
        raise RuntimeError(f"the ServerApp stopped: {outcome!r}") from outcome
    return outcome


def stopped(overrides: dict, num_nodes: int = 2, cpus: int = 2,
            grid_wrapper: Callable[[Grid], Grid] | None = None,
            client: ClientApp | None = None) -> BaseException:
    """Run a federation that is expected to stop; return what stopped it."""
    outcome = _run(overrides, num_nodes, client, cpus, grid_wrapper)
    if not isinstance(outcome, BaseException):
        raise AssertionError(f"the run finished: {outcome.run_dir}")
    return outcome


def _run(overrides: dict, num_nodes: int, client: ClientApp | None, cpus: int,
         grid_wrapper: Callable[[Grid], Grid] | None) -> RunOutcome | BaseException:
    cfg = AppConfig.from_run_config(overrides)
    outcome: list[RunOutcome | BaseException] = []
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            outcome.append(run_federation(grid_wrapper(grid) if grid_wrapper else grid, cfg))
        except BaseException as err:  # handed to the caller
            outcome.append(err)

    start_ray(cpus)
    try:
        run_simulation(
            server_app=server,
            client_app=client or client_app(overrides),
            num_supernodes=num_nodes,
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
        )
    except KeyboardInterrupt:  # Ctrl-C reaches this thread, not the ServerApp's: run the
        trigger_exit_handlers(run_before_force_exit=True)  # handler that writes its summary
        raise
    if not outcome:
        raise RuntimeError("the ServerApp did not finish (see the log above)")
    return outcome[0]
