"""ServerApp: the code that orchestrates a run, usually through a strategy."""

from __future__ import annotations

from collections.abc import Callable

from appliance.context import Context
from appliance.errors import AppConfigError
from appliance.grid import Grid

__all__ = ["MainFn", "ServerApp"]

MainFn = Callable[[Grid, Context], None]


class ServerApp:
    """The server-side half of a federated app.

    Example:
        >>> app = ServerApp()
        >>> @app.main()
        ... def main(grid: Grid, context: Context) -> None:
        ...     print(grid.get_node_ids())
    """

    def __init__(self) -> None:
        self._main: MainFn | None = None

    def main(self) -> Callable[[MainFn], MainFn]:
        """Register the function that runs the federation: ``main(grid, context)``."""

        def decorator(fn: MainFn) -> MainFn:
            if self._main is not None:
                raise ValueError("ServerApp already has a main function")
            self._main = fn
            return fn

        return decorator

    def __call__(self, grid: Grid, context: Context) -> None:
        """Run the app's main function. Exceptions propagate: the host ends the run."""
        if self._main is None:
            raise AppConfigError("ServerApp has no @app.main() function")
        self._main(grid, context)
