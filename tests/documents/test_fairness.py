"""Per-tenant ingest slots: a slot is held as long as its document is worked on, however long that is, and freed
when the work ends or its worker dies."""

import threading
import time

import pytest
import redis
from django.conf import settings

from documents.fairness import _slot_name, tenant_ingest_slot


@pytest.fixture
def tenant_id():
    tenant = 900_000 + int(time.time_ns() % 100_000)
    yield tenant
    client = redis.Redis.from_url(settings.REDIS_URL)
    for slot in range(settings.INGEST_MAX_CONCURRENT_PER_TENANT):
        client.delete(_slot_name(tenant, slot))


def test_a_slot_held_longer_than_its_lease_is_renewed_and_stays_taken(tenant_id):
    answers = []
    with tenant_ingest_slot(tenant_id, lease_seconds=1) as held:
        for _ in range(3):  # three leases long
            time.sleep(1)
            with tenant_ingest_slot(tenant_id, lease_seconds=1) as second:
                answers.append(second)
        ttl = redis.Redis.from_url(settings.REDIS_URL).pttl(_slot_name(tenant_id, 0))

    assert held is True
    assert answers == [False, False, False]
    assert 0 < ttl <= 1000
    with tenant_ingest_slot(tenant_id, lease_seconds=1) as after:  # given back at the end of the work
        assert after is True


def test_a_slot_whose_worker_died_is_free_once_its_lease_runs_out(tenant_id):
    client = redis.Redis.from_url(settings.REDIS_URL)
    # What a dead worker leaves: a lock nobody renews.
    assert client.lock(_slot_name(tenant_id, 0), timeout=1, blocking=False).acquire()

    with tenant_ingest_slot(tenant_id, lease_seconds=1) as right_away:
        assert right_away is False
    time.sleep(1.2)
    with tenant_ingest_slot(tenant_id, lease_seconds=1) as later:
        assert later is True


def test_slots_of_one_tenant_do_not_block_another(tenant_id):
    other = tenant_id + 1
    try:
        with tenant_ingest_slot(tenant_id) as first, tenant_ingest_slot(other) as second:
            assert (first, second) == (True, True)
    finally:
        redis.Redis.from_url(settings.REDIS_URL).delete(_slot_name(other, 0))


def test_the_renewal_stops_with_the_block(tenant_id):
    with tenant_ingest_slot(tenant_id, lease_seconds=1):
        pass

    assert not [thread for thread in threading.enumerate() if thread.name == "ingest-slot-lease"]
