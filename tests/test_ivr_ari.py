"""`IvrApp` runs flows end to end over ARI against the in-process Asterisk emulator: inbound
call, prompts, caller DTMF with barge-in, transfers, call recording paused for card digits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cti.ari.rest import AriRestClient
from dialer.service import ConfigError, IvrConfig, load_ivr_flows, parse_config, run_service
from ivr.ari import IvrApp, interpreter_session
from ivr.model import Flow, Gather, Hangup, Menu, Node, Pay, Pos, Prompt, Record, Transfer
from ivr.ports import PaymentResult
from ivr.protocol import CardDetails, Command, Event, Play
from ivr.runner import Services
from sim.pbx.ari_server import AriServer, IvrExit
from tests.test_ari_emulator import AUTH

SCALE = 0.01
#: emulated sound lengths: "long" never ends before the caller acts, "short" at once
SOUNDS = {"long": 300.0, "short": 1.0}
POS = Pos("test.yaml", 1, 1)
CALLER = "+447700900123"
PAN = "4111111111111111"


def prompt(*media: str) -> Prompt:
    return Prompt({"en": media}, POS)


def node(cls: type[Node], name: str, **kw: Any) -> Any:
    return cls(name=name, pos=POS, fields={}, **kw)


def menu_flow() -> Flow:
    nodes: dict[str, Node] = {
        "main": node(
            Menu, "main", prompt=prompt("sound:long"),
            options={"1": "account", "2": "agent", "3": "sales", "4": "pay", "5": "message"},
            no_input="bye", invalid="bye", timeout_s=5.0,
        ),
        "account": node(
            Gather, "account", prompt=prompt("sound:long"), var="account", next="bye",
            no_input="bye", invalid="bye", min_digits=3, max_digits=8, finish_key="#",
            timeout_s=5.0,
        ),
        "agent": node(
            Transfer, "agent", kind="queue", target="support", failed="bye",
            data={"verified": "yes", "caller": "{ani}"},
        ),
        "sales": node(Transfer, "sales", kind="group", target="sales", failed="bye"),
        "pay": node(
            Pay, "pay", amount=None, currency="GBP", action="tokenize", require_cvv=False,
            prompts={"card_number": prompt("sound:long"), "expiry": prompt("sound:long")},
            next="bye", failed="bye", aborted="bye", timeout_s=5.0,
        ),
        "message": node(
            Record, "message", prompt=prompt("sound:short"), var="message", next="bye",
            max_s=30.0, finish_key="#",
        ),
        "bye": node(Hangup, "bye", prompt=prompt("sound:short")),
    }
    return Flow(name="menu", path=Path("menu.yaml"), start="main", nodes=nodes)


@dataclass
class Seen:
    """What the app emitted, per channel."""

    items: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def __call__(self, channel_id: str, kind: str, detail: Any) -> None:
        self.items.append((channel_id, kind, dict(detail)))

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [d for _, k, d in self.items if k == kind]

    def entered(self) -> list[str]:
        return [d["node"] for d in self.kinds("trace") if d["what"] == "enter"]


class Picker:
    def __init__(self, endpoint: str | None) -> None:
        self.endpoint = endpoint
        self.asked: list[str] = []

    async def pick(self, group: str) -> str | None:
        self.asked.append(group)
        return self.endpoint


class TokenGateway:
    async def charge(self, card: CardDetails, amount: str, currency: str, description: str,
                     idempotency_key: str) -> PaymentResult:
        return PaymentResult(True, token="tok_test")

    async def tokenize(self, card: CardDetails, idempotency_key: str) -> PaymentResult:
        return PaymentResult(True, token="tok_test")


@dataclass
class Rig:
    server: AriServer
    app: IvrApp
    seen: Seen
    app_task: asyncio.Task[None]

    async def until(self, pred: Callable[[], bool], timeout: float = 3.0) -> None:
        async with asyncio.timeout(timeout):
            while not pred():
                await asyncio.sleep(0.002)

    def plays(self, cid: str) -> int:
        return self.server.requests[("POST", f"/channels/{cid}/play")]

    def heard(self, cid: str, kind: str = "PlaybackStarted") -> int:
        """Playbacks of `cid` that really started (or finished): not merely requested."""
        return sum(1 for _app, k, c in self.server.event_log if k == kind and c == cid)

    def finished(self) -> list[dict[str, Any]]:
        return self.seen.kinds("finished")

    async def call(self) -> str:
        cid = self.server.place_inbound(CALLER, "0800123456", app="ivr")
        await self.until(lambda: self.plays(cid) >= 1)
        return cid


@pytest.fixture
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    """The emulator and an IvrApp on it; `indirect` params: IvrApp keyword overrides."""
    options: dict[str, Any] = {"agents": Picker("PJSIP/agent1"), "reconnect_initial_s": 0.01}
    options.update(getattr(request, "param", {}))
    async with (
        AriServer(time_scale=SCALE, sounds=SOUNDS) as server,
        aiohttp.ClientSession(headers=AUTH) as http,
    ):
        rest = AriRestClient(http, f"http://127.0.0.1:{server.port}")
        seen = Seen()
        app = IvrApp(
            rest, http, "ivr", {"menu": menu_flow()}, {"default": "menu"},
            Services(gateway=TokenGateway()), on_event=seen, **options,
        )
        task = asyncio.create_task(app.run())
        rig = Rig(server, app, seen, task)
        try:
            await rig.until(app.connected.is_set)
            yield rig
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_menu_then_gather_then_hangup_with_barge_in_stopping_the_prompt(rig: Rig) -> None:
    cid = await rig.call()
    assert rig.server.channel_state(cid) == "Up"  # answered before the first prompt
    rig.server.press(cid, "1")
    await rig.until(lambda: "account" in rig.seen.entered())
    stops = [k for k in rig.server.requests if k[0] == "DELETE" and k[1].startswith("/playbacks/")]
    assert len(stops) == 1  # the app stopped the menu prompt: Asterisk does not (12b)
    await rig.until(lambda: rig.plays(cid) >= 2)
    rig.server.press(cid, "123#")
    await rig.until(lambda: bool(rig.finished()))
    assert rig.finished() == [{"reason": "hangup", "node": "bye"}]
    assert rig.seen.entered() == ["main", "account", "bye"]
    assert [d["digit"] for d in rig.seen.kinds("dtmf")] == ["1", "1", "2", "3", "#"]
    await rig.until(lambda: cid not in rig.server.live_channel_ids())
    assert rig.app.active_calls == 0


async def test_caller_hangup_mid_flow_ends_the_session(rig: Rig) -> None:
    cid = await rig.call()
    rig.server.press(cid, "1")
    await rig.until(lambda: rig.plays(cid) >= 2)
    rig.server.caller_hangup(cid)
    await rig.until(lambda: bool(rig.finished()))
    assert rig.finished()[0]["reason"] == "caller_hangup"
    assert rig.app.active_calls == 0


async def test_queue_transfer_sets_paceline_vars_and_continues_into_paceline_queue(
    rig: Rig,
) -> None:
    cid = await rig.call()
    rig.server.press(cid, "2")
    await rig.until(lambda: bool(rig.finished()))
    assert rig.finished() == [{"reason": "transferred", "node": "agent"}]
    assert rig.server.ivr_exits[cid] == IvrExit(
        "paceline-queue", "support", {"PACELINE_VERIFIED": "yes", "PACELINE_CALLER": CALLER}
    )
    await asyncio.sleep(0)
    assert rig.server.dialplan_location(cid) == ("paceline-queue", "support")  # not hung up


async def test_group_transfer_bridges_an_agent_and_ends_both_legs_together(rig: Rig) -> None:
    cid = await rig.call()
    rig.server.press(cid, "3")
    await rig.until(lambda: bool(rig.finished()))
    assert rig.finished() == [{"reason": "transferred", "node": "sales"}]
    (agent,) = rig.server.bridge_members(cid)
    assert agent.startswith(f"{cid}.agent")
    rig.server.caller_hangup(cid)
    await rig.until(lambda: agent not in rig.server.live_channel_ids())


@pytest.mark.parametrize("rig", [{"record_calls": True}], indirect=True)
async def test_call_recording_is_paused_while_card_digits_are_keyed(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cid = await rig.call()
    name = f"paceline-ivr-{cid}"
    pause = ("POST", f"/recordings/live/{name}/pause")
    unpause = ("DELETE", f"/recordings/live/{name}/pause")
    rig.server.press(cid, "4")
    await rig.until(lambda: "pay" in rig.seen.entered() and rig.plays(cid) >= 2)
    assert rig.server.requests[pause] == 1 and rig.server.requests[unpause] == 0
    assert rig.server._recordings[name].state == "paused"
    rig.server.press(cid, PAN[:6] + "*")  # then abort
    await rig.until(lambda: bool(rig.finished()))
    assert rig.server.requests[unpause] == 1
    assert [d["digit"] for d in rig.seen.kinds("dtmf")] == ["4"] + ["*"] * 7
    assert PAN[:6] not in caplog.text
    assert PAN[:6] not in repr(rig.seen.items)


@pytest.mark.parametrize("rig", [{"record_calls": True}], indirect=True)
async def test_the_call_recording_runs_on_a_snoop_channel_so_the_prompts_still_play(
    rig: Rig,
) -> None:
    """A recording of the caller's channel would hold its command queue (Asterisk's
    record_file) and with it every prompt: the call is recorded through a snoop channel."""
    cid = await rig.call()
    snoop, name = f"{cid}.snoop", f"paceline-ivr-{cid}"
    await rig.until(lambda: rig.heard(cid) >= 1)  # the menu prompt plays
    assert rig.server._recordings[name].target == f"channel:{snoop}"
    assert snoop in rig.server.live_channel_ids()
    assert not [r for r in rig.server._recordings.values() if r.target == f"channel:{cid}"]
    assert rig.app.active_calls == 1  # the snoop's StasisStart started no session
    rig.server.press(cid, "4")
    await rig.until(lambda: rig.heard(cid) >= 2)  # past the first prompt: the card prompt
    assert rig.server._recordings[name].state == "paused"
    rig.server.press(cid, "*")  # abort: the goodbye prompt plays to its end
    await rig.until(lambda: bool(rig.finished()))
    assert rig.finished() == [{"reason": "hangup", "node": "bye"}]
    assert rig.heard(cid, "PlaybackFinished") == 3
    assert rig.server.requests[("DELETE", f"/recordings/live/{name}/pause")] == 1
    await rig.until(lambda: snoop not in rig.server.live_channel_ids())
    assert name in rig.server.stored_recordings  # the app hung the snoop up: file kept


@pytest.mark.parametrize("rig", [{"record_calls": True}], indirect=True)
async def test_a_record_node_records_the_caller_beside_the_call_recording(rig: Rig) -> None:
    cid = await rig.call()
    rig.server.press(cid, "5")
    await rig.until(lambda: any(
        r.target == f"channel:{cid}" and r.state == "recording"
        for r in rig.server._recordings.values()
    ))
    assert f"paceline-ivr-{cid}" in rig.server._recordings  # the call recording goes on
    rig.server.press(cid, "#")
    await rig.until(lambda: bool(rig.finished()))
    assert rig.finished() == [{"reason": "hangup", "node": "bye"}]
    assert rig.seen.entered() == ["main", "message", "bye"]
    assert rig.heard(cid, "PlaybackFinished") == 3  # menu (stopped), beep, goodbye


@pytest.mark.parametrize("rig", [{"agents": Picker(None)}], indirect=True)
async def test_group_transfer_without_a_free_agent_takes_the_failed_route(rig: Rig) -> None:
    cid = await rig.call()
    rig.server.press(cid, "3")
    await rig.until(lambda: bool(rig.finished()))
    assert rig.finished() == [{"reason": "hangup", "node": "bye"}]
    assert rig.seen.entered() == ["main", "sales", "bye"]
    assert rig.server.bridge_members(cid) == []


async def test_flow_named_in_stasis_args_is_used_and_an_unknown_one_hangs_up(rig: Rig) -> None:
    good = rig.server.place_inbound(CALLER, "999", app="ivr", args=("ivr", "menu"))
    await rig.until(lambda: rig.plays(good) >= 1)
    bad = rig.server.place_inbound(CALLER, "999", app="ivr", args=("ivr", "nope"))
    await rig.until(lambda: bad not in rig.server.live_channel_ids())
    assert rig.plays(bad) == 0


async def test_caller_gone_while_the_event_link_was_down_ends_the_session(rig: Rig) -> None:
    cid = await rig.call()
    rig.server.drop_websockets(noticed=False)  # Asterisk keeps the app; its events are lost
    rig.server.caller_hangup(cid)
    await rig.until(lambda: bool(rig.finished()))
    assert rig.finished()[0]["reason"] == "caller_hangup"
    assert rig.app.connected.is_set()


async def test_stopping_the_app_hangs_up_calls_still_in_a_flow(rig: Rig) -> None:
    cid = await rig.call()
    rig.app_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await rig.app_task
    assert cid not in rig.server.live_channel_ids()


# ---- `paceline run` with an [ivr] section ----------------------------------------------------

MAIN_FLOW = """\
flow: main
start: menu
nodes:
  menu:
    type: menu
    prompt: sound:long
    options: {"1": bye}
    no_input: bye
    invalid: bye
  bye:
    type: hangup
"""


def run_config(tmp_path: Path, port: int = 8088, **ivr: Any) -> dict[str, Any]:
    section: dict[str, Any] = {"flows": "flows", "default_flow": "main"}
    section.update(ivr)
    return {
        "node_id": "n1", "tick_s": 0.2,
        "pbx": [{"name": "lab", "backend": "ari", "url": f"http://127.0.0.1:{port}",
                 "username": "dialer", "password": "dialer", "app": "paceline",
                 "trunk": "PJSIP/{number}@trunk"}],
        "ivr": section,
    }


def test_ivr_section_parses_with_the_first_ari_pbx_and_flows_beside_the_file(
    tmp_path: Path,
) -> None:
    cfg = parse_config(run_config(tmp_path, routes={"0800123456": "main"}, record_calls=True),
                       str(tmp_path / "run.toml"))
    assert cfg.ivr == IvrConfig(pbx="lab", flows=tmp_path / "flows", app="paceline-ivr",
                                default_flow="main", record_calls=True,
                                routes={"0800123456": "main"}, gateway="sim")


@pytest.mark.parametrize(("ivr", "message"), [
    ({"app": "paceline"}, "ivr.app: 'paceline' is the dialer's own Stasis app"),
    ({"pbx": "other"}, "ivr.pbx: the IVR runs on ARI"),
    ({"payment": {"gateway": "stripe"}}, "ivr.payment.gateway: only \"sim\""),
    ({"flow": "x"}, "ivr: unknown key 'flow'"),
    ({"flows": ""}, "ivr.flows: the folder of the flow files is required"),
])
def test_ivr_section_errors_name_the_key(tmp_path: Path, ivr: dict[str, Any],
                                         message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(run_config(tmp_path, **ivr), "run.toml")


def test_bad_flows_or_routes_stop_the_start_with_every_problem(tmp_path: Path) -> None:
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "main.yaml").write_text(MAIN_FLOW)
    (tmp_path / "flows" / "bad.yaml").write_text("start: nowhere\nnodes:\n  x: {type: hangup}\n")
    cfg = parse_config(run_config(tmp_path), str(tmp_path / "run.toml"))
    assert cfg.ivr is not None
    with pytest.raises(ConfigError, match=r"bad\.yaml:1:8: start: unknown node 'nowhere'"):
        load_ivr_flows(cfg.ivr)
    (tmp_path / "flows" / "bad.yaml").unlink()
    assert list(load_ivr_flows(cfg.ivr)) == ["main"]
    cfg = parse_config(run_config(tmp_path, routes={"100": "pay"}), str(tmp_path / "run.toml"))
    assert cfg.ivr is not None
    with pytest.raises(ConfigError, match=r"routes\.100: no flow named 'pay'"):
        load_ivr_flows(cfg.ivr)


async def test_paceline_run_answers_inbound_calls_with_the_ivr(tmp_path: Path) -> None:
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "main.yaml").write_text(MAIN_FLOW)
    async with AriServer(time_scale=SCALE, sounds=SOUNDS) as server:
        cfg = parse_config(run_config(tmp_path, server.port), str(tmp_path / "run.toml"))
        stop = asyncio.Event()
        service = asyncio.create_task(
            run_service(cfg, db_url=f"sqlite:///{tmp_path / 'p.db'}", stop=stop)
        )
        try:
            async with asyncio.timeout(5):
                while "paceline-ivr" not in server._sockets:
                    await asyncio.sleep(0.01)
                cid = server.place_inbound(CALLER, "0800123456", app="paceline-ivr")
                while server.requests[("POST", f"/channels/{cid}/play")] < 1:
                    await asyncio.sleep(0.005)
                server.press(cid, "1")
                while cid in server.live_channel_ids():
                    await asyncio.sleep(0.005)
        finally:
            stop.set()
            await service


# ---- the session language from the channel --------------------------------------------------


def language_flow(inputs: tuple[str, ...] = ()) -> Flow:
    bye = node(Hangup, "bye", prompt=Prompt({"en": ("sound:short",), "fr": ("sound:short",)}, POS))
    return Flow(name="lang", path=Path("lang.yaml"), start="bye", nodes={"bye": bye},
                default_language="en", languages=("en", "fr"), inputs=inputs)


async def session_languages(
    flow: Flow, calls: list[tuple[str, dict[str, str]]]
) -> list[tuple[str, str]]:
    """Place one inbound call per (channel language, channel variables); for each call, the
    `language` variable the session was built with and the language of its first playback."""
    built: dict[str, str] = {}
    played: dict[str, str] = {}

    class Watched:
        """The interpreter's session, noting the language of its first Play."""

        def __init__(self, session: Any, session_id: str) -> None:
            self.session, self.session_id = session, session_id

        def _note(self, commands: list[Command]) -> list[Command]:
            for c in commands:
                if isinstance(c, Play):
                    played.setdefault(self.session_id, c.language)
            return commands

        def start(self) -> list[Command]:
            return self._note(self.session.start())

        def handle(self, event: Event) -> list[Command]:
            return self._note(self.session.handle(event))

        @property
        def variables(self) -> Mapping[str, Any]:
            return self.session.variables  # type: ignore[no-any-return]

    def factory(flow: Flow, *, session_id: str, variables: dict[str, Any], today: date) -> Any:
        built[session_id] = variables["language"]
        return Watched(interpreter_session(flow, session_id=session_id, variables=variables,
                                           today=today), session_id)

    async with (
        AriServer(time_scale=SCALE, sounds=SOUNDS) as server,
        aiohttp.ClientSession(headers=AUTH) as http,
    ):
        rest = AriRestClient(http, f"http://127.0.0.1:{server.port}")
        app = IvrApp(rest, http, "ivr", {"lang": flow}, {"default": "lang"}, Services(),
                     session_factory=factory, reconnect_initial_s=0.01)
        task = asyncio.create_task(app.run())
        try:
            async with asyncio.timeout(5):
                await app.connected.wait()
                ids = []
                for language, variables in calls:
                    cid = server.place_inbound(CALLER, "100", app="ivr", language=language)
                    server._channels[cid].variables.update(variables)  # set by the dialplan
                    ids.append(cid)
                while any(cid in server.live_channel_ids() for cid in ids):
                    await asyncio.sleep(0.005)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return [(built[cid], played[cid]) for cid in ids]


async def test_the_session_speaks_the_channel_language_when_the_flow_has_it() -> None:
    languages = await session_languages(language_flow(), [("fr", {}), ("de", {}), ("en", {})])
    assert languages == [("fr", "fr"), ("en", "en"), ("en", "en")]


async def test_a_paceline_language_channel_variable_wins_over_the_channel_language() -> None:
    flow = language_flow(inputs=("language",))
    calls = [("fr", {"PACELINE_LANGUAGE": "en"}), ("fr", {}), ("en", {"PACELINE_LANGUAGE": "fr"})]
    languages = await session_languages(flow, calls)
    assert languages == [("en", "en"), ("fr", "fr"), ("fr", "fr")]
