"""The hand-over of a chat turn's events from its thread to the event loop, and how they are written (chat.streaming).
The stream through the real server, with a model, is in test_chat.py."""

import asyncio
import json
import threading

from chat.streaming import EventHandOver, server_sent_events
from tests.helpers import server_sent_events as parsed


def test_consecutive_tokens_leave_as_one_event_and_every_other_event_keeps_its_place():
    events = [
        ("conversation", {"id": "c1", "title": "Warranty"}),
        ("sources", {"citations": []}),
        ("token", {"text": "Two"}),
        ("token", {"text": " years"}),
        ("token", {"text": " [1]"}),
        ("error", {"message": "The language model stopped responding."}),
        ("token", {"text": "."}),
        ("done", {"extractive": False, "found": True}),
    ]

    written = server_sent_events(events)

    assert parsed(written.splitlines()) == [
        ("conversation", {"id": "c1", "title": "Warranty"}),
        ("sources", {"citations": []}),
        ("token", {"text": "Two years [1]"}),
        ("error", {"message": "The language model stopped responding."}),
        ("token", {"text": "."}),
        ("done", {"extractive": False, "found": True}),
    ]
    assert written.endswith("\n\n")  # every event is complete: the browser acts on it at once


def test_a_single_token_is_written_as_it_came_and_text_that_needs_escaping_survives():
    text = 'a "quoted"\nline\\ with ünïcode'

    written = server_sent_events([("token", {"text": text})])

    assert written == f"event: token\ndata: {json.dumps({'text': text})}\n\n"
    assert parsed(written.splitlines()) == [("token", {"text": text})]
    assert server_sent_events([]) == ""


def test_the_hand_over_keeps_every_event_in_order_and_wakes_the_loop_once_for_what_arrived_together():
    async def scenario():
        hand_over = EventHandOver(asyncio.get_running_loop())
        wakes = 0
        original_set = hand_over._arrived.set

        def counting_set():
            nonlocal wakes
            wakes += 1
            original_set()

        hand_over._arrived.set = counting_set
        producer = threading.Thread(target=lambda: [hand_over.put(number) for number in range(1000)])
        producer.start()
        producer.join()  # all 1,000 put while the loop was not taking
        await hand_over.wait()
        first = hand_over.take()
        hand_over.put("after")  # from the loop's own thread too
        await hand_over.wait()
        second = hand_over.take()
        return first, second, wakes

    first, second, wakes = asyncio.run(scenario())

    assert first == list(range(1000))
    assert second == ["after"]
    assert wakes == 2  # once for the 1,000, once for the one after


def test_taking_with_nothing_new_returns_nothing_and_the_next_put_wakes_the_loop_again():
    async def scenario():
        hand_over = EventHandOver(asyncio.get_running_loop())
        hand_over.put("a")
        await hand_over.wait()
        taken = [hand_over.take(), hand_over.take()]
        threading.Thread(target=hand_over.put, args=("b",)).start()
        await asyncio.wait_for(hand_over.wait(), timeout=5)
        taken.append(hand_over.take())
        return taken

    assert asyncio.run(scenario()) == [["a"], [], ["b"]]


def test_events_put_before_the_loop_is_known_are_taken_when_it_first_waits():
    # A turn starts producing as soon as it is admitted, before its response is read by the event loop.
    hand_over = EventHandOver()
    hand_over.put("conversation")
    hand_over.put("sources")

    async def scenario():
        await asyncio.wait_for(hand_over.wait(), timeout=5)
        taken = [hand_over.take()]
        threading.Thread(target=hand_over.put, args=("token",)).start()
        await asyncio.wait_for(hand_over.wait(), timeout=5)
        taken.append(hand_over.take())
        return taken

    assert asyncio.run(scenario()) == [["conversation", "sources"], ["token"]]
