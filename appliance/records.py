"""Records: the typed containers every message carries.

``ArrayRecord`` holds numpy arrays (model parameters), ``MetricRecord`` numbers,
``ConfigRecord`` configuration values, and ``RecordDict`` names records of any of
the three kinds. Each validates on construction and on assignment, raising
``TypeError`` for a value of the wrong type and ``ValueError`` for a value of the
right type that is out of range, so that anything a record holds can be encoded by
:mod:`appliance.wire` without further checks.

Records hold references, not copies: an ``ArrayRecord`` built from arrays keeps
those arrays (converted to a supported dtype, never pickled or object-typed).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = [
    "ARRAY_DTYPES",
    "MAX_NDIM",
    "ArrayRecord",
    "ConfigRecord",
    "ConfigValue",
    "MetricRecord",
    "MetricValue",
    "Record",
    "RecordDict",
    "all_finite",
    "check_utf8",
]

#: The dtypes an ``ArrayRecord`` may hold (and the wire may carry), by name.
ARRAY_DTYPES: frozenset[str] = frozenset(
    {
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
    }
)

MAX_KEY_CHARS = 256
#: Most dimensions an array may have (numpy allows 64; the wire carries 32).
MAX_NDIM = 32
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

MetricScalar: TypeAlias = int | float
MetricValue: TypeAlias = int | float | list[int] | list[float]
ConfigScalar: TypeAlias = int | float | str | bytes | bool
ConfigValue: TypeAlias = (
    int
    | float
    | str
    | bytes
    | bool
    | list[int]
    | list[float]
    | list[str]
    | list[bytes]
    | list[bool]
)


def check_utf8(what: str, text: str) -> str:
    """Return ``text`` if it can be encoded as UTF-8 (no lone surrogates), else raise ValueError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode text (lone surrogate)") from None
    return text


_FINITE_BLOCK = 1 << 16


def all_finite(array: npt.NDArray[Any]) -> bool:
    """Whether every value of ``array`` is finite (true for non-float dtypes).

    Checked block by block: ``np.isfinite(array).all()`` would build a mask as long as
    the array and stream it through memory a second time.
    """
    if array.dtype.kind not in "fc":
        return True
    flat = array.reshape(-1)
    mask = np.empty(min(flat.size, _FINITE_BLOCK), dtype=np.bool_)
    for start in range(0, flat.size, _FINITE_BLOCK):
        part = mask[: min(_FINITE_BLOCK, flat.size - start)]
        np.isfinite(flat[start : start + _FINITE_BLOCK], out=part)
        if not part.all():
            return False
    return True


def _check_key(key: object, record: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"{record} keys must be str, got {type(key).__name__}")
    if not key:
        raise ValueError(f"{record} keys must not be empty")
    check_utf8(f"{record} key", key)
    if len(key) > MAX_KEY_CHARS:
        raise ValueError(f"{record} key {key[:32]!r}... is longer than {MAX_KEY_CHARS} characters")
    return key


def _check_array(name: str, value: object) -> npt.NDArray[Any]:
    if not isinstance(value, np.ndarray):
        raise TypeError(
            f"ArrayRecord[{name!r}] must be a numpy.ndarray, got {type(value).__name__}"
        )
    dtype_name = value.dtype.name
    if dtype_name not in ARRAY_DTYPES:
        raise TypeError(
            f"ArrayRecord[{name!r}] has dtype {value.dtype.str!r}; "
            f"supported: {', '.join(sorted(ARRAY_DTYPES))}"
        )
    if value.ndim > MAX_NDIM:
        raise ValueError(f"ArrayRecord[{name!r}] has {value.ndim} dimensions, at most {MAX_NDIM}")
    if not value.dtype.isnative:
        value = value.astype(value.dtype.newbyteorder("="))
    return value


def _scalar_kind(value: object, allowed: tuple[type, ...]) -> type:
    """The canonical Python type of ``value`` among ``allowed`` (numpy scalars accepted)."""
    if isinstance(value, np.generic):
        value = value.item()
    # bool is an int subclass: test it first so True is never silently a number.
    for kind in (bool, int, float, str, bytes):
        if isinstance(value, kind):
            if kind in allowed:
                return kind
            break
    raise TypeError(type(value).__name__)


def _normalize(value: object, kind: type) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if kind is int and not _INT64_MIN <= value <= _INT64_MAX:  # type: ignore[operator]
        raise ValueError(f"integer {value} does not fit in 64 bits")
    if kind is str:
        check_utf8("string value", value)  # type: ignore[arg-type]
    return value


def _check_value(record: str, key: str, value: object, allowed: tuple[type, ...]) -> ConfigValue:
    names = "/".join(k.__name__ for k in allowed)
    if isinstance(value, list | tuple):
        kinds = set()
        for item in value:
            try:
                kinds.add(_scalar_kind(item, allowed))
            except TypeError as exc:
                raise TypeError(
                    f"{record}[{key!r}] list holds a {exc}; items must be {names}"
                ) from None
        if len(kinds) > 1:
            found = ", ".join(sorted(k.__name__ for k in kinds))
            raise TypeError(f"{record}[{key!r}] list mixes {found}; items must share one type")
        if not kinds:
            return []
        (kind,) = kinds
        return [_normalize(item, kind) for item in value]
    try:
        kind = _scalar_kind(value, allowed)
    except TypeError as exc:
        raise TypeError(f"{record}[{key!r}] is a {exc}; values must be {names} or a list") from None
    return _normalize(value, kind)  # type: ignore[no-any-return]


class _ValidatedDict(MutableMapping[str, Any]):
    """A dict that validates every key and value it is given."""

    _record_name = "record"

    def __init__(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None) -> None:
        self._data: dict[str, Any] = {}
        if items is not None:
            pairs = items.items() if isinstance(items, Mapping) else items
            for key, value in pairs:
                self[key] = value

    def _validate(self, key: str, value: object) -> Any:
        raise NotImplementedError

    def __setitem__(self, key: str, value: Any) -> None:
        key = _check_key(key, self._record_name)
        self._data[key] = self._validate(key, value)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._data!r})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._data == other._data

    __hash__ = None  # type: ignore[assignment]


class MetricRecord(_ValidatedDict):
    """Numbers a node or the server reports: ``str -> int | float | list[int] | list[float]``.

    Booleans are refused (a metric is a number); numpy scalars are converted to
    Python numbers; integers must fit in 64 bits.
    """

    _record_name = "MetricRecord"

    def _validate(self, key: str, value: object) -> MetricValue:
        return _check_value(self._record_name, key, value, (int, float))  # type: ignore[return-value]


class ConfigRecord(_ValidatedDict):
    """Configuration: ``str -> int | float | str | bytes | bool`` or a list of one of those."""

    _record_name = "ConfigRecord"

    def _validate(self, key: str, value: object) -> ConfigValue:
        return _check_value(self._record_name, key, value, (bool, int, float, str, bytes))


class ArrayRecord(_ValidatedDict):
    """Named numpy arrays in order, typically a model's parameters.

    Build it from a list of arrays (named ``"0"``, ``"1"``, ...) or from a mapping of
    names to arrays. Only the dtypes in :data:`ARRAY_DTYPES` are accepted.

    Example:
        >>> rec = ArrayRecord([np.zeros((2, 3), dtype=np.float32), np.ones(3)])
        >>> [a.shape for a in rec.to_numpy_ndarrays()]
        [(2, 3), (3,)]
    """

    _record_name = "ArrayRecord"

    def __init__(
        self,
        arrays: Mapping[str, npt.NDArray[Any]] | Iterable[npt.NDArray[Any]] | None = None,
    ) -> None:
        if arrays is not None and not isinstance(arrays, Mapping):
            if isinstance(arrays, np.ndarray):
                raise TypeError("ArrayRecord takes a list or a dict of arrays, not one array")
            arrays = {str(i): a for i, a in enumerate(arrays)}
        super().__init__(arrays)

    def _validate(self, key: str, value: object) -> npt.NDArray[Any]:
        return _check_array(key, value)

    def to_numpy_ndarrays(self) -> list[npt.NDArray[Any]]:
        """The arrays, in order."""
        return list(self._data.values())

    @property
    def nbytes(self) -> int:
        """Total size of the array data in bytes."""
        return sum(a.nbytes for a in self._data.values())

    def __eq__(self, other: object) -> bool:
        """Equal when names, dtypes, shapes and bytes all match (NaNs compare bitwise)."""
        if not isinstance(other, ArrayRecord):
            return NotImplemented
        if list(self._data) != list(other._data):
            return False
        return all(
            a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
            for a, b in zip(self._data.values(), other._data.values(), strict=True)
        )

    __hash__ = None

    def __repr__(self) -> str:
        parts = ", ".join(f"{k!r}: {a.dtype.name}{list(a.shape)}" for k, a in self._data.items())
        return f"ArrayRecord({{{parts}}})"


Record: TypeAlias = ArrayRecord | MetricRecord | ConfigRecord


class RecordDict(_ValidatedDict):
    """Named records of any kind: the content of a :class:`~appliance.message.Message`."""

    _record_name = "RecordDict"

    def _validate(self, key: str, value: object) -> Record:
        if not isinstance(value, ArrayRecord | MetricRecord | ConfigRecord):
            raise TypeError(
                f"RecordDict[{key!r}] must be an ArrayRecord, MetricRecord or ConfigRecord, "
                f"got {type(value).__name__}"
            )
        return value

    def _of_kind(self, kind: type[Record]) -> dict[str, Any]:
        return {k: v for k, v in self._data.items() if isinstance(v, kind)}

    @property
    def array_records(self) -> dict[str, ArrayRecord]:
        """The ``ArrayRecord`` entries, in order."""
        return self._of_kind(ArrayRecord)

    @property
    def metric_records(self) -> dict[str, MetricRecord]:
        """The ``MetricRecord`` entries, in order."""
        return self._of_kind(MetricRecord)

    @property
    def config_records(self) -> dict[str, ConfigRecord]:
        """The ``ConfigRecord`` entries, in order."""
        return self._of_kind(ConfigRecord)
