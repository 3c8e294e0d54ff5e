"""What every fuzz test shares: example counts, the time and memory bounds, and byte mutations.

A reader passes a fuzz example when it returns or raises a ``MedmtlError``; anything else fails the test,
and so does a ``MedmtlError`` caused by a failed numpy or torch allocation (medmtl, numpy or torch tried to
allocate what a header declared). Each reader call runs under an address-space limit (``RLIMIT_AS``) of the
process's current size plus ``MEMORY_BUDGET``, so such an allocation fails fast here instead of swapping
the machine.

One exception is tolerated: the HDF5 library sizes a few metadata buffers from the file before it checks
them against the file's end, so a corrupt length makes it reserve (never touch) up to 4 GiB of address
space, then fail with "addr overflow". Under the limit the reservation fails first and h5py reports
"memory allocation failed"; both end as ``KSpaceFileError``, and resident memory does not grow either way.

Examples per test: ``DEFAULT_EXAMPLES``, or ``LONG_EXAMPLES`` under ``pytest --fuzz-long`` (the option is
registered in ``tests/conftest.py``). Hypothesis runs derandomised and without its example database, so a
CI failure reproduces locally with the same command.
"""

from __future__ import annotations

import re
import resource
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from medmtl.errors import MedmtlError

DEFAULT_EXAMPLES = 200
LONG_EXAMPLES = 5000
# pytest-timeout per fuzz test: generous for a busy 2-core machine, tight enough that a hang fails the run.
TIMEOUT_BASE_S = 60.0
TIMEOUT_PER_EXAMPLE_S = 0.5
# Address space one reader call may add. Readers refuse a single read above medmtl's documented limits
# (2 GiB for k-space), which the fuzzed files never legitimately reach: their largest real read is a few KiB.
MEMORY_BUDGET = 1 << 30
# How numpy (besides raising MemoryError), torch and C++ word a failed allocation; HDF5's wording,
# "memory allocation failed", is left out on purpose (see the module docstring).
_ALLOCATION_FAILURE = re.compile(
    r"unable to allocate|can't allocate|cannot allocate|out of memory|bad_alloc", re.I
)

T = TypeVar("T")


def fuzz_examples(request: pytest.FixtureRequest) -> int:
    """The example count for this run; also sets the test's pytest-timeout (call it from a fixture).

    ``func_only=True`` makes pytest-timeout read the marker when the test body starts, after fixtures ran.
    """
    long_run = request.config.getoption("--fuzz-long", default=False)
    count = LONG_EXAMPLES if long_run else DEFAULT_EXAMPLES
    request.node.add_marker(
        pytest.mark.timeout(TIMEOUT_BASE_S + TIMEOUT_PER_EXAMPLE_S * count, func_only=True)
    )
    return count


def fuzz_settings(examples: int) -> settings:
    """Reproducible Hypothesis settings: no deadline (CI machines vary), derandomised, no database."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmSize")


@contextmanager
def memory_bound(extra: int = MEMORY_BUDGET) -> Iterator[None]:
    """Limit this process's address space to its current size plus ``extra`` bytes while inside."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _vm_size() + extra
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _allocation_failure(err: BaseException | None) -> BaseException | None:
    """The first exception in ``err``'s cause chain that reports a failed allocation, or None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, MemoryError) or _ALLOCATION_FAILURE.search(str(err)):
            return err
        err = err.__cause__ or err.__context__
    return None


def read_or_typed_error(read: Callable[..., T], *args: Any) -> T | MedmtlError:
    """``read(*args)`` under the memory bound: its result, or the ``MedmtlError`` it raised.

    Any other exception propagates (Hypothesis then shrinks and reports the example); a typed error caused
    by a failed allocation fails with AssertionError.
    """
    try:
        with memory_bound():
            return read(*args)
    except MedmtlError as err:
        failure = _allocation_failure(err)
        assert failure is None, f"over-limit allocation behind {err!r}: {failure!r}"
        return err


def mutations(seeds: Sequence[bytes], header_bytes: int = 4096) -> st.SearchStrategy[bytes]:
    """Damaged copies of ``seeds``: random bytes, truncations, bit flips, overwritten runs, garbage tails.

    Flips and overwrites land in the first or the last ``header_bytes`` (where formats keep their sizes and
    offsets: HDF5's superblock and object headers, a zip archive's pickle and central directory) two times
    in three, anywhere otherwise.
    """
    seed = st.sampled_from(list(seeds))

    def position(data: bytes) -> st.SearchStrategy[int]:
        edge = min(len(data), header_bytes)
        return st.one_of(
            st.integers(0, edge - 1),
            st.integers(len(data) - edge, len(data) - 1),
            st.integers(0, len(data) - 1),
        )

    def truncated(data: bytes) -> st.SearchStrategy[bytes]:
        return st.integers(0, len(data) - 1).map(lambda n: data[:n])

    def bit_flipped(data: bytes) -> st.SearchStrategy[bytes]:
        def apply(flips: list[tuple[int, int]]) -> bytes:
            out = bytearray(data)
            for pos, bit in flips:
                out[pos] ^= 1 << bit
            return bytes(out)

        return st.lists(st.tuples(position(data), st.integers(0, 7)), min_size=1, max_size=8).map(apply)

    def overwritten(data: bytes) -> st.SearchStrategy[bytes]:
        # Runs of 0xFF or 0x00 turn sizes and offsets into huge or empty ones.
        run = st.one_of(st.binary(min_size=1, max_size=16), st.sampled_from([b"\xff" * 8, b"\x00" * 8]))

        def apply(edit: tuple[int, bytes]) -> bytes:
            pos, chunk = edit
            return data[:pos] + chunk + data[pos + len(chunk) :]

        return st.tuples(position(data), run).map(apply)

    def garbage_tail(data: bytes) -> st.SearchStrategy[bytes]:
        return st.tuples(st.integers(0, len(data)), st.binary(max_size=1024)).map(
            lambda cut: data[: cut[0]] + cut[1]
        )

    return st.one_of(
        st.binary(max_size=2048),
        seed.flatmap(truncated),
        seed.flatmap(bit_flipped),
        seed.flatmap(overwritten),
        seed.flatmap(garbage_tail),
    )
