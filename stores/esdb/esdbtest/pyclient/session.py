#!/usr/bin/env python3
"""A scripted session of the official EventSourcingDB Python client
(PyPI "eventsourcingdb") against a server, by default the esdbtest double.

    python3 session.py <base-url> <api-token> [v2|v1]

The last argument is the API the client must settle on: v2 (the default;
EventSourcingDB since 1.3) or v1 (a server from before the v2 API, such as
the double made WithV1Only).

It pings, verifies the token, writes with each precondition (and checks
that failing ones are refused and write nothing), reads with bounds,
order, recursion and fromLatestEvent, observes a few events (one of them
written while observing), runs EventQL queries (grouping too), registers a
schema, reads subjects and event types, and writes with recursive
preconditions (with the v1 API the client refuses those before sending).
With the v2 API the server reports errors with a code inside a 200 answer;
with the v1 API as statuses (409, 400, 404), to which the client assigns
codes where they clearly match. The client verifies every event's hash on
request; the session asks it to. Each check prints PASS or FAIL; the exit
status is non-zero when any check failed. The session expects an empty
store.
"""

import asyncio
import sys
import traceback

from eventsourcingdb import (
    Bound,
    BoundType,
    Client,
    DbApiError,
    ErrorCode,
    EventCandidate,
    IfEventIsMissingDuringRead,
    IncompatibleServerError,
    IsEventQlQueryTrue,
    IsSubjectOnEventId,
    IsSubjectPopulated,
    IsSubjectPristine,
    ObserveEventsOptions,
    Order,
    PreconditionOptions,
    ReadEventsOptions,
    ReadFromLatestEvent,
    ReadSubjectsOptions,
)

SOURCE = "https://library.example.com"
ACQUIRED = "io.example.library.book-acquired"
BORROWED = "io.example.library.book-borrowed"
RETURNED = "io.example.library.book-returned"
LOST = "io.example.library.book-lost"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

results: list[tuple[str, bool, str]] = []

# The API the client must settle on (argument 3).
API = "v2"
RECURSIVE = PreconditionOptions(recursive=True)


def status(v1_status: int) -> int:
    """The status of an error: the v2 API reports errors with a code inside a
    200 answer, the v1 API with a status."""
    return 200 if API == "v2" else v1_status


def record(name: str, ok: bool, detail: str = "") -> None:
    results.append((name, ok, detail))
    print(("PASS " if ok else "FAIL ") + name + ("" if ok else ": " + detail), flush=True)


async def check(name, body) -> None:
    """Runs one check; an exception or a failed assert fails it."""
    try:
        await asyncio.wait_for(body(), timeout=15)
        record(name, True)
    except AssertionError as error:
        record(name, False, str(error) or traceback.format_exc(limit=2))
    except Exception as error:  # noqa: BLE001 - every failure is reported
        record(name, False, f"{type(error).__name__}: {error}")


def event(subject: str, typ: str, data: dict, traceparent: str | None = None) -> EventCandidate:
    return EventCandidate(source=SOURCE, subject=subject, type=typ, data=data, trace_parent=traceparent)


async def read(client: Client, subject: str, options: ReadEventsOptions) -> list:
    events = [e async for e in client.read_events(subject, options)]
    for e in events:
        e.verify_hash()
    return events


async def expect_refused(coroutine, status: int, code: str | None = None) -> None:
    try:
        await coroutine
    except DbApiError as error:
        assert error.status == status, f"status {error.status}, want {status} ({error})"
        if code is not None:
            assert error.code == code, f"code {error.code}, want {code} ({error})"
        return
    raise AssertionError(f"not refused, want status {status}")


def v2_code(code: str) -> str | None:
    """A code that only the v2 API reports (for the v1 API, the client assigns
    codes only to the errors that clearly match one)."""
    return code if API == "v2" else None


async def session(url: str, token: str) -> None:
    async with Client(url, token) as client:

        async def ping():
            await client.ping()
            assert await client._get_api_version() == API, f"client did not settle on the {API} API"

        await check(f"ping (client settles on the {API} API)", ping)
        await check("verify api token", client.verify_api_token)

        async def wrong_token():
            async with Client(url, token + "-wrong") as other:
                await expect_refused(other.verify_api_token(), 401)

        await check("wrong token is refused with 401", wrong_token)

        async def pristine():
            written = await client.write_events(
                [event("/books/42", ACQUIRED, {"title": "2001 – A Space Odyssey", "isbn": "<978>"}, TRACEPARENT)],
                [IsSubjectPristine("/books/42")],
            )
            assert [e.event_id for e in written] == ["0"], [e.event_id for e in written]
            written[0].verify_hash()
            assert written[0].trace_parent == TRACEPARENT, written[0].trace_parent
            assert written[0].predecessor_hash == "0" * 64, written[0].predecessor_hash

        await check("write with isSubjectPristine", pristine)

        async def populated():
            written = await client.write_events(
                [event("/books/42", BORROWED, {"reader": "jane"})], [IsSubjectPopulated("/books/42")]
            )
            assert written[0].event_id == "1", written[0].event_id

        await check("write with isSubjectPopulated", populated)

        async def on_event_id():
            written = await client.write_events(
                [event("/books/42", RETURNED, {"reader": "jane"})], [IsSubjectOnEventId("/books/42", "1")]
            )
            assert written[0].event_id == "2", written[0].event_id

        await check("write with isSubjectOnEventId", on_event_id)

        async def eventql_true():
            query = 'FROM e IN events WHERE e.subject == "/books/42" PROJECT INTO COUNT() == 3'
            written = await client.write_events(
                [event("/books/43", ACQUIRED, {"title": "Rendezvous with Rama"}), event("/books/43/copies/1", ACQUIRED, {"copy": 1})],
                [IsEventQlQueryTrue(query)],
            )
            assert [e.event_id for e in written] == ["3", "4"], [e.event_id for e in written]

        await check("write two events with isEventQlQueryTrue", eventql_true)

        async def failing():
            violated = ErrorCode.PRECONDITION_VIOLATED
            cases = [
                IsSubjectPristine("/books/42"),
                IsSubjectPopulated("/books/99"),
                IsSubjectOnEventId("/books/42", "1"),
                IsEventQlQueryTrue("FROM e IN events PROJECT INTO COUNT() == 0"),
            ]
            for precondition in cases:
                await expect_refused(
                    client.write_events([event("/books/42", LOST, {})], [precondition]), status(409), violated
                )
            events = await read(client, "/", ReadEventsOptions(recursive=True))
            assert len(events) == 5, f"failed preconditions wrote: {len(events)} events"

        await check("failing preconditions are refused (precondition-violated) and write nothing", failing)

        async def read_subject():
            events = await read(client, "/books/42", ReadEventsOptions(recursive=False))
            assert [e.event_id for e in events] == ["0", "1", "2"], [e.event_id for e in events]
            assert events[0].data == {"title": "2001 – A Space Odyssey", "isbn": "<978>"}, events[0].data
            assert events[1].type == BORROWED and events[1].source == SOURCE and events[1].data_content_type == "application/json"

        await check("read one subject (hashes verified)", read_subject)

        async def read_recursive():
            events = await read(client, "/books", ReadEventsOptions(recursive=True))
            assert [e.event_id for e in events] == ["0", "1", "2", "3", "4"], [e.event_id for e in events]
            only = await read(client, "/books/43", ReadEventsOptions(recursive=False))
            assert [e.event_id for e in only] == ["3"], [e.event_id for e in only]

        await check("read recursively", read_recursive)

        async def read_order():
            events = await read(client, "/books", ReadEventsOptions(recursive=True, order=Order.ANTICHRONOLOGICAL))
            assert [e.event_id for e in events] == ["4", "3", "2", "1", "0"], [e.event_id for e in events]

        await check("read antichronologically", read_order)

        async def read_bounds():
            events = await read(client, "/", ReadEventsOptions(
                recursive=True,
                lower_bound=Bound(id="1", type=BoundType.INCLUSIVE),
                upper_bound=Bound(id="3", type=BoundType.EXCLUSIVE),
            ))
            assert [e.event_id for e in events] == ["1", "2"], [e.event_id for e in events]
            events = await read(client, "/", ReadEventsOptions(
                recursive=True, lower_bound=Bound(id="1", type=BoundType.EXCLUSIVE),
                upper_bound=Bound(id="3", type=BoundType.INCLUSIVE), order=Order.CHRONOLOGICAL,
            ))
            assert [e.event_id for e in events] == ["2", "3"], [e.event_id for e in events]

        await check("read with lower and upper bounds", read_bounds)

        async def read_latest():
            events = await read(client, "/books/42", ReadEventsOptions(
                recursive=False,
                from_latest_event=ReadFromLatestEvent("/books/42", BORROWED, IfEventIsMissingDuringRead.READ_EVERYTHING),
            ))
            assert [e.event_id for e in events] == ["1", "2"], [e.event_id for e in events]
            events = await read(client, "/books/42", ReadEventsOptions(
                recursive=False,
                from_latest_event=ReadFromLatestEvent("/books/42", LOST, IfEventIsMissingDuringRead.READ_NOTHING),
            ))
            assert events == [], [e.event_id for e in events]

        await check("read from the latest event of a type", read_latest)

        async def bad_reads():
            await expect_refused(
                read(client, "/", ReadEventsOptions(recursive=True, lower_bound=Bound(id="-1", type=BoundType.INCLUSIVE))),
                status(400), v2_code(ErrorCode.EVENT_ID_MALFORMED),
            )
            await expect_refused(
                read(client, "books", ReadEventsOptions(recursive=True)), status(400), v2_code(ErrorCode.SUBJECT_MALFORMED)
            )

        await check("malformed reads are refused", bad_reads)

        async def observe():
            got = []

            async def write_later():
                await asyncio.sleep(0.3)
                await client.write_events([event("/books/44", ACQUIRED, {"title": "Childhood's End"})])

            writer = asyncio.create_task(write_later())
            options = ObserveEventsOptions(recursive=True, lower_bound=Bound(id="3", type=BoundType.INCLUSIVE))
            async for e in client.observe_events("/books", options):
                e.verify_hash()
                got.append(e.event_id)
                if len(got) == 3:
                    break
            await writer
            assert got == ["3", "4", "5"], got

        await check("observe a few events, one written meanwhile, then stop", observe)

        async def eventql():
            rows = [r async for r in client.run_eventql_query(
                f'FROM e IN events WHERE e.type == "{ACQUIRED}" ORDER BY e.id DESC TOP 2 PROJECT INTO {{ id: e.id, title: e.data.title }}'
            )]
            assert rows == [{"id": "5", "title": "Childhood's End"}, {"id": "4", "title": None}], rows
            rows = [r async for r in client.run_eventql_query("FROM e IN events PROJECT INTO e")]
            assert [r["id"] for r in rows] == ["0", "1", "2", "3", "4", "5"], rows
            rows = [r async for r in client.run_eventql_query(
                'FROM e IN events WHERE e.subject == "/books/42" AND NOT (e.type == "' + ACQUIRED + '") PROJECT INTO COUNT()'
            )]
            assert rows == [2], rows
            rows = [r async for r in client.run_eventql_query(
                "FROM e IN events GROUP BY e.type PROJECT INTO { type: UNIQUE(e.type), count: COUNT() }"
            )]
            counts = {r["type"]: r["count"] for r in rows}
            assert len(rows) == 3 and counts == {ACQUIRED: 4, BORROWED: 1, RETURNED: 1}, rows
            rows = [r async for r in client.run_eventql_query(
                "FROM e IN events GROUP BY e.subject HAVING COUNT() > 1 PROJECT INTO UNIQUE(e.subject)"
            )]
            assert rows == ["/books/42"], rows
            await expect_refused(anext(client.run_eventql_query("FROM e IN")), status(400), v2_code(ErrorCode.QUERY_MALFORMED))

        await check("run EventQL queries (grouping too)", eventql)

        async def schema():
            returned_schema = {
                "type": "object",
                "properties": {"reader": {"type": "string"}},
                "required": ["reader"],
                "additionalProperties": False,
            }
            await client.register_event_schema(RETURNED, returned_schema)
            await expect_refused(
                client.write_events([event("/books/43", RETURNED, {"reader": 7})]), status(409), ErrorCode.EVENT_SCHEMA_VIOLATED
            )
            await client.write_events([event("/books/43", RETURNED, {"reader": "joe"})])
            await expect_refused(
                client.register_event_schema(RETURNED, returned_schema), status(409), ErrorCode.EVENT_SCHEMA_ALREADY_REGISTERED
            )
            await client.register_event_schema(LOST, {"type": "object"})

        await check("register event schemas and enforce them", schema)

        async def subjects():
            got = [s async for s in client.read_subjects("/", ReadSubjectsOptions(recursive=True))]
            want = ["/", "/books", "/books/42", "/books/43", "/books/43/copies", "/books/43/copies/1", "/books/44"]
            assert got == want, got
            got = [s async for s in client.read_subjects("/books/43", ReadSubjectsOptions(recursive=False))]
            assert got == ["/books/43"], got

        await check("read subjects", subjects)

        async def event_types():
            got = {(t.type, t.has_events, t.schema is not None) async for t in client.read_event_types()}
            want = {(ACQUIRED, True, False), (BORROWED, True, False), (RETURNED, True, True), (LOST, False, True)}
            assert got == want, got
            one = await client.read_event_type(RETURNED)
            assert one.type == RETURNED and one.has_events and one.schema["required"] == ["reader"], one
            await expect_refused(client.read_event_type("io.example.library.book-burned"), status(404), ErrorCode.EVENT_TYPE_UNKNOWN)

        await check("read event types", event_types)

        async def recursive_preconditions():
            violated = ErrorCode.PRECONDITION_VIOLATED
            before = len(await read(client, "/", ReadEventsOptions(recursive=True)))
            if API == "v1":
                # The v1 API cannot check nested subjects: the client refuses
                # to send the write.
                try:
                    await client.write_events([event("/magazines/1", ACQUIRED, {})], [IsSubjectPristine("/magazines", RECURSIVE)])
                except IncompatibleServerError:
                    pass
                else:
                    raise AssertionError("a recursive precondition was sent to a server without the v2 API")
                after = len(await read(client, "/", ReadEventsOptions(recursive=True)))
                assert after == before, f"the refused write wrote {after - before} events"
                return
            first = await client.write_events(
                [event("/magazines/1", ACQUIRED, {"title": "Analog"})], [IsSubjectPristine("/magazines", RECURSIVE)]
            )
            # /magazines itself has no event, /magazines/1 has one.
            await expect_refused(
                client.write_events([event("/magazines/2", ACQUIRED, {})], [IsSubjectPristine("/magazines", RECURSIVE)]),
                200, violated,
            )
            second = await client.write_events(
                [event("/magazines/2", ACQUIRED, {"title": "Omni"})], [IsSubjectPristine("/magazines")]
            )
            await client.write_events(
                [event("/magazines/2", BORROWED, {"reader": "ann"})], [IsSubjectPopulated("/magazines", RECURSIVE)]
            )
            await expect_refused(
                client.write_events([event("/magazines/3", ACQUIRED, {})], [IsSubjectPopulated("/journals", RECURSIVE)]),
                200, violated,
            )
            latest = await read(client, "/magazines", ReadEventsOptions(recursive=True, order=Order.ANTICHRONOLOGICAL))
            await client.write_events(
                [event("/magazines/3", ACQUIRED, {"title": "Byte"})],
                [IsSubjectOnEventId("/magazines", latest[0].event_id, RECURSIVE)],
            )
            await expect_refused(
                client.write_events(
                    [event("/magazines/3", LOST, {})], [IsSubjectOnEventId("/magazines", first[0].event_id, RECURSIVE)]
                ),
                200, violated,
            )
            after = await read(client, "/magazines", ReadEventsOptions(recursive=True))
            assert [e.subject for e in after] == ["/magazines/1", "/magazines/2", "/magazines/2", "/magazines/3"], after
            assert after[1].event_id == second[0].event_id

        await check("preconditions on nested subjects (recursive)", recursive_preconditions)


def main() -> int:
    global API
    if len(sys.argv) not in (3, 4) or (len(sys.argv) == 4 and sys.argv[3] not in ("v1", "v2")):
        print("usage: session.py <base-url> <api-token> [v2|v1]", file=sys.stderr)
        return 2
    if len(sys.argv) == 4:
        API = sys.argv[3]
    try:
        asyncio.run(session(sys.argv[1], sys.argv[2]))
    except Exception as error:  # noqa: BLE001
        record("session", False, f"{type(error).__name__}: {error}")
    failed = [name for name, ok, _ in results if not ok]
    if failed or not results:
        print(f"FAIL: {len(failed)} of {len(results)} checks failed: {', '.join(failed)}")
        return 1
    print(f"PASS: all {len(results)} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
