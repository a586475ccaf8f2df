"""npyseq.order.hosts: each host's part of every global batch, as index arithmetic (property tests)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npyseq import order
from npyseq.errors import InvalidArgumentError
from npyseq.order import HostSlice, hosts

MODES = [False, "batches", "blocks", "global"]


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 8), per_host=st.integers(1, 12), rows=st.integers(1, 3000), mode=st.sampled_from(MODES),
       seed=st.integers(0, 2**64 - 1), epoch=st.integers(0, 5), drop=st.booleans(), data=st.data())
def test_the_union_over_hosts_is_the_global_batch(n, per_host, rows, mode, seed, epoch, drop, data):
    batch_size = n * per_host
    count = order.num_batches(rows, batch_size, drop)
    if count == 0:
        return
    b = data.draw(st.integers(0, count - 1))
    whole = order.batch_indices(rows, batch_size, b, shuffle=mode, seed=seed, epoch=epoch, block_size=3,
                                drop_remainder=drop)
    if not drop and rows % batch_size % n:  # the partial batch cannot be shared: check_hosts refuses
        with pytest.raises(InvalidArgumentError, match="the last global batch has"):
            hosts.check_hosts(rows, batch_size, drop, HostSlice(n, 0), "seq")
        return
    hosts.check_hosts(rows, batch_size, drop, HostSlice(n, 0), "seq")
    parts = [hosts.host_part(whole, HostSlice(n, h), h) for h in range(n)]
    assert {len(p) for p in parts} == {len(whole) // n}
    assert np.array_equal(np.concatenate(parts), whole)  # disjoint, in order, together the batch
    # The strided form serves the same parts, n items per global batch.
    strided = HostSlice(n, None)
    assert hosts.num_items(count, strided) == n * count and hosts.num_items(count, HostSlice(n, 0)) == count
    assert [hosts.locate(b * n + h, strided) for h in range(n)] == [(b, h) for h in range(n)]
    if mode in (False, "batches"):  # a host's part is one range of rows
        assert all(np.array_equal(p, np.arange(p[0], p[0] + len(p))) for p in parts)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 8), batch_size=st.integers(1, 64), rows=st.integers(1, 500), drop=st.booleans())
def test_check_hosts_accepts_exactly_the_batches_that_split_equally(n, batch_size, rows, drop):
    ok = batch_size % n == 0 and (drop or rows % batch_size % n == 0)
    try:
        hosts.check_hosts(rows, batch_size, drop, HostSlice(n, n - 1), "seq")
    except InvalidArgumentError:
        assert not ok
    else:
        assert ok or n == 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_hosts=0, index=0), "num_hosts must be a positive int, got 0"),
    (dict(num_hosts=2, index=2), r"index must be in \[0, 2\) for num_hosts=2, got 2"),
    (dict(num_hosts=2.0, index=0), "num_hosts must be a positive int, got 2.0"),
    (dict(num_hosts=2, index=True), "index must be an int, got True"),
])
def test_host_slice_validates(kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message):
        HostSlice(**kwargs)


def test_host_slice_describes_itself():
    assert HostSlice(4, 1).describe() == "host 1 of 4" and not HostSlice(4, 1).strided
    assert HostSlice(4, None).describe() == "all 4 host parts in turn" and HostSlice(4, None).strided
