"""Fixtures for the certs integration tests: a module-scoped federation and servers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from certs_echo import EchoServer, Federation


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    return Federation(tmp_path_factory.mktemp("federation"), "Federation Test")


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    return Federation(tmp_path_factory.mktemp("foreign"), "Foreign Federation")


@pytest.fixture(scope="module")
def server(
    federation: Federation, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EchoServer]:
    files = federation.server_files(tmp_path_factory.mktemp("tls"))
    echo = EchoServer(federation, files, is_enrolled=lambda i: not i.name.startswith("stranger"))
    yield echo
    echo.stop()


@pytest.fixture
def make_server(federation: Federation, tmp_path: Path) -> Iterator[Callable[..., EchoServer]]:
    started: list[EchoServer] = []

    def make(**kwargs: object) -> EchoServer:
        files = federation.server_files(tmp_path / f"tls{len(started)}")
        started.append(EchoServer(federation, files, **kwargs))  # type: ignore[arg-type]
        return started[-1]

    yield make
    for echo in started:
        echo.stop()
