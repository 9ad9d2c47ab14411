"""The k/t formula, the modulus choice, the config checks and the neighbour graph."""

from __future__ import annotations

import pytest

from secagg import (
    ParameterError,
    RoundConfig,
    choose_modulus_bits,
    choose_parameters,
    derive_round_params,
    neighbour_graph,
)

# n, dropout, corrupted -> k, t, max_dropouts
FORMULA = {
    "3 sites: complete graph, nothing tolerated": ((3, 0.2, 0.1), (2, 2, 0)),
    "10 sites, defaults": ((10, 0.2, 0.1), (6, 4, 2)),
    "30 sites, defaults": ((30, 0.2, 0.1), (16, 10, 6)),
    "100 sites, 10% dropouts, 5% corrupted": ((100, 0.1, 0.05), (26, 16, 10)),
    "100 sites, defaults": ((100, 0.2, 0.1), (52, 32, 20)),
    "semi-honest clients": ((20, 0.1, 0.0), (6, 4, 2)),
    "5 sites capped at the complete graph": ((5, 0.4, 0.0), (4, 3, 1)),
}


@pytest.mark.parametrize(("inputs", "expected"), FORMULA.values(), ids=list(FORMULA))
def test_formula(inputs, expected) -> None:
    n, dropout, corrupted = inputs
    params = choose_parameters(n, dropout_fraction=dropout, corrupted_fraction=corrupted)
    assert (params.neighbours, params.threshold, params.max_dropouts) == expected
    # The invariants the formula exists for.
    k, t, c = params.neighbours, params.threshold, params.corrupted
    assert 2 * t > k + min(c, k)  # no 2t - C shares from k neighbours: privacy
    assert k - params.max_dropouts >= t  # enough holders survive: correctness
    assert params.max_dropouts + c < k or params.is_complete  # no partial sums


def test_explicit_k_and_t_are_checked_against_the_bounds() -> None:
    params = choose_parameters(
        100, dropout_fraction=0.04, corrupted_fraction=0.0, neighbours=10, threshold=7
    )
    assert (params.neighbours, params.threshold, params.max_dropouts) == (10, 7, 3)
    assert choose_parameters(
        8, dropout_fraction=0.0, corrupted_fraction=0.0, neighbours=50
    ).is_complete


REFUSALS = {
    "k too small for the dropouts": (
        {"n": 100, "dropout_fraction": 0.1, "corrupted_fraction": 0.0, "neighbours": 10},
        "cannot tolerate 10 dropouts",
    ),
    "odd k": (
        {"n": 100, "dropout_fraction": 0.0, "corrupted_fraction": 0.0, "neighbours": 9},
        "must be even",
    ),
    "threshold below the privacy bound": (
        {"n": 10, "dropout_fraction": 0.0, "corrupted_fraction": 0.0, "threshold": 1},
        r"privacy needs t > \(k \+ C\) / 2",
    ),
    "too few participants": (
        {"n": 2, "dropout_fraction": 0.0, "corrupted_fraction": 0.0},
        "needs 3",
    ),
    "half the sites dropping": (
        {"n": 10, "dropout_fraction": 0.5, "corrupted_fraction": 0.0},
        r"dropout_fraction must be in \[0, 0.5\)",
    ),
}


@pytest.mark.parametrize(("kwargs", "match"), REFUSALS.values(), ids=list(REFUSALS))
def test_unsafe_parameters_are_refused(kwargs, match) -> None:
    with pytest.raises(ParameterError, match=match):
        choose_parameters(**kwargs)


def test_modulus_is_32_bits_when_the_sum_cannot_wrap_else_64_else_refused() -> None:
    assert choose_modulus_bits(10, quantization_bits=16, max_weight=4096) == 32
    assert choose_modulus_bits(17, quantization_bits=16, max_weight=4096) == 64
    # The exact boundary: n * w * L < 2^32.
    assert choose_modulus_bits(1, quantization_bits=32, max_weight=1) == 32
    assert choose_modulus_bits(2, quantization_bits=32, max_weight=1) == 64
    with pytest.raises(ParameterError, match="does not fit in 64 bits"):
        choose_modulus_bits(10_000, quantization_bits=32, max_weight=2**32)


def _config(**overrides) -> RoundConfig:
    settings = {
        "round_id": bytes(32),
        "dropout_fraction": 0.2,
        "corrupted_fraction": 0.1,
        "num_values": 10,
        "clip_range": 1.0,
        "invited": 10,
    }
    settings.update(overrides)
    return RoundConfig(**settings)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"round_id": b"short"}, "round_id must be 32 bytes"),
        ({"clip_range": float("nan")}, "clip_range must be finite"),
        ({"quantization_bits": 33}, "quantization_bits must be in 1..32"),
        ({"invited": 2, "min_participants": 3}, "fewer than min_participants"),
        ({"num_values": 0}, "must hold 1.."),
        ({"max_weight": 2**32, "quantization_bits": 32, "invited": 10_000}, "64 bits"),
    ],
)
def test_config_is_validated(overrides, match) -> None:
    with pytest.raises(ParameterError, match=match):
        _config(**overrides)


def test_config_digest_binds_every_field() -> None:
    base = _config()
    assert base.digest() == _config().digest()
    for change in ({"clip_range": 2.0}, {"invited": 11}, {"round_id": b"\x01" * 32}):
        assert _config(**change).digest() != base.digest()


def test_round_params_refuse_a_roster_outside_the_config() -> None:
    with pytest.raises(ParameterError, match="only 10 were invited"):
        derive_round_params(_config(), 11)
    with pytest.raises(ParameterError, match="fewer than min_participants"):
        derive_round_params(_config(min_participants=8), 7)


@pytest.mark.parametrize(("n", "k"), [(10, 4), (30, 16), (7, 6), (100, 10)])
def test_graph_is_regular_symmetric_and_deterministic(n: int, k: int) -> None:
    ids = list(range(1000, 1000 + n))
    graph = neighbour_graph(ids, b"\x07" * 32, k)
    assert set(graph) == set(ids)
    for node, neighbours in graph.items():
        assert len(neighbours) == k and node not in neighbours
        assert all(node in graph[peer] for peer in neighbours)
    assert neighbour_graph(list(reversed(ids)), b"\x07" * 32, k) == graph
    if k < n - 1:
        assert neighbour_graph(ids, b"\x08" * 32, k) != graph


def test_graph_refuses_bad_inputs() -> None:
    with pytest.raises(ValueError, match="distinct"):
        neighbour_graph([1, 1, 2], bytes(32), 2)
    with pytest.raises(ValueError, match="k must be even"):
        neighbour_graph(list(range(1, 11)), bytes(32), 3)
