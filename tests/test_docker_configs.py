"""The deployment in `docker/` against the code that uses it. Docker cannot run here, so these
tests read the files: every Asterisk context, extension, application, user, permission and
endpoint that Paceline's code names must be defined in the configs a user deploys, and
compose.yaml must wire the services, ports, mounts and secrets the run configs expect.

The names come from the code wherever the code has them: the backends' constructor defaults,
the AMI tracker's event handlers, the actions `AmiTelephony` sends, the REST resources
`AriRestClient` calls, the emulator's dialplan (`sim.pbx.core.DIALPLAN`) and AMI permission
table, and the campaign model's default information message. (tests/test_ari_faults.py
checks `paceline-amd` step by step against `AriTelephony`; here every `paceline-*` context
is compared with the emulator's, and everything around the dialplan is checked.)
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cti.ami.telephony import AmiTelephony
from cti.ami.tracker import ChannelTracker
from cti.ari.telephony import AriTelephony
from cti.interface import OriginateRequest
from dialer.db.models import Campaign
from dialer.service import PbxConfig, ServiceConfig, load_config
from sim.pbx import core
from sim.pbx.ami_server import ACTION_CLASSES
from tests.asterisk_conf import (
    Category,
    ConfigError,
    Context,
    categories,
    dialplan,
    parse_file,
)

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
ASTERISK = DOCKER / "asterisk"
RUN_CONFIGS = sorted((DOCKER / "paceline").glob("*.toml"))
REFERENCE = ROOT / "tests" / "fixtures" / "asterisk" / "reference-config"

#: Asterisk's manager event classes (the `Privilege` of each event, Asterisk 20) for the
#: events `ChannelTracker` handles. A new handler needs its class here.
EVENT_CLASS = {
    "newchannel": "call", "newstate": "call", "dialstate": "call", "rename": "call",
    "hangup": "call", "originateresponse": "call", "bridgeenter": "call",
    "bridgeleave": "call", "bridgedestroy": "call", "blindtransfer": "call",
    "attendedtransfer": "call", "musiconholdstart": "call", "musiconholdstop": "call",
    "varset": "dialplan", "dtmfend": "dtmf",
    "queuecallerjoin": "agent", "queuecallerleave": "agent",
}  # fmt: skip

#: Manager classes a dialer must never hold: shutdown/reload, shell commands, config files.
DANGEROUS_CLASSES = frozenset({"all", "system", "command", "config"})

#: Dialplan applications built into Asterisk's core (main/pbx_builtins.c, pbx_variables.c).
CORE_APPS = frozenset({
    "Answer", "BackGround", "Busy", "Congestion", "ExecIfTime", "Goto", "GotoIf",
    "GotoIfTime", "Hangup", "ImportVar", "Incomplete", "NoOp", "Proceeding", "Progress",
    "RaiseException", "Ringing", "SayAlpha", "SayDigits", "SayNumber", "Set", "SetAMAFlags",
    "Wait", "WaitDigit", "WaitExten",
})  # fmt: skip
#: The module that provides each other application our dialplan uses.
APP_MODULES = {
    "AMD": "app_amd.so",
    "Dial": "app_dial.so",
    "MusicOnHold": "res_musiconhold.so",
    "Playback": "app_playback.so",
    "Queue": "app_queue.so",
    "Stasis": "app_stasis.so",
}

_COMPOSE_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+][^}]*)?\}")
_PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")
_LOCAL = re.compile(r"Local/([^@,)]+)@([\w-]+)")
_PJSIP = re.compile(r"PJSIP/([\w${}-]+)")


# ----- loading -----------------------------------------------------------------------------
def plan() -> dict[str, Context]:
    return dialplan(ASTERISK / "extensions.conf")


def env_names() -> list[str]:
    return re.findall(r"^([A-Z_][A-Z0-9_]*)=", (DOCKER / ".env.example").read_text(), re.M)


def load(path: Path) -> ServiceConfig:
    """The run config as `paceline run` reads it (`dialer.service.load_config`), with each
    variable of .env.example set to `value-of-<NAME>`: a secret's value tells which
    environment variable the service reads it from."""
    saved = {name: os.environ.get(name) for name in env_names()}
    os.environ.update({name: f"value-of-{name}" for name in saved})
    try:
        return load_config(path)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def pbx_of(path: Path) -> PbxConfig:
    pbxs = load(path).pbxs
    assert len(pbxs) == 1, f"{path.name}: the compose deployment has one Asterisk"
    return pbxs[0]


def secret_env(pbx: PbxConfig) -> str:
    """The environment variable the service reads `pbx`'s secret from (see `load`)."""
    assert pbx.secret.startswith("value-of-"), f"{pbx.name}: the secret is not from docker/.env"
    return pbx.secret.removeprefix("value-of-")


def run_config_for(backend: str) -> Path:
    found = [p for p in RUN_CONFIGS if pbx_of(p).backend == backend]
    assert found, f"docker/paceline/ has no run config with backend = {backend!r}"
    return found[0]


def compose() -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(data, dict), "compose.yaml is not a YAML mapping"
    return data


def service(name: str) -> dict[str, Any]:
    services: dict[str, Any] = compose()["services"]
    assert name in services, f"compose.yaml has no service {name!r}"
    svc: dict[str, Any] = services[name]
    return svc


def one(path: Path, name: str, type_: str | None = None) -> Category:
    found = categories(path, type_=type_)
    kind = f" of type {type_}" if type_ else ""
    assert name in found, f"{path.name}: no [{name}]{kind} (has {sorted(found)})"
    return found[name]


def csv(value: str | None) -> set[str]:
    return {v.strip() for v in (value or "").split(",") if v.strip()}


def defaults(cls: type, suffix: str) -> dict[str, str]:
    """The constructor's defaults for parameters named `*<suffix>`: the names the code uses."""
    params = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
    return {n: p.default for n, p in params.items() if n.endswith(suffix)}


def find_exten(context: Context, exten: str) -> tuple[Context, str] | None:
    """The context and extension pattern Asterisk would run for `exten` dialled in `context`
    (the emulator's matcher), looking into included contexts too."""
    for pattern in context.extensions:
        if core.exten_matches(pattern, exten):
            return context, pattern
    contexts = plan()
    for included in context.includes:
        found = find_exten(contexts[included], exten) if included in contexts else None
        if found is not None:
            return found
    return None


def pjsip(type_: str) -> dict[str, Category]:
    return categories(ASTERISK / "pjsip.conf", type_=type_)


def agent_endpoints() -> dict[str, Category]:
    return {n: c for n, c in pjsip("endpoint").items() if re.fullmatch(r"agent\d+", n)}


# ----- the parser --------------------------------------------------------------------------
def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_parser_reads_templates_objects_comments_and_includes(tmp_path: Path) -> None:
    write(tmp_path, "inc.conf", "[b](tpl)\nextra = 1\n")
    path = write(tmp_path, "main.conf", (
        "[tpl](!)\ntype = endpoint ; a comment\nallow => ulaw\n"
        ";-- a block\ncomment --;\n"
        "[a](tpl)\nsecret = se\\;cret\n"
        "#include \"inc.conf\"\n"
        "[a](+)\nmore = yes\n"
    ))  # fmt: skip
    parsed = parse_file(path)
    assert [(c.name, c.is_template) for c in parsed] == [("tpl", True), ("a", False), ("b", False)]
    a = categories(path)["a"]
    assert [(o.key, o.value, o.is_object) for o in a.options] == [
        ("type", "endpoint", False),
        ("allow", "ulaw", True),
        ("secret", "se;cret", False),
        ("more", "yes", False),
    ]
    assert categories(path)["b"].get("type") == "endpoint"
    assert categories(path)["b"].where.file.name == "inc.conf"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("key = value\n", "main.conf:1: 'key = value' is outside any [category]"),
        ("[a](nope)\n", "main.conf:1: [a] uses template 'nope'"),
        ("[a]\n#include missing.conf\n", "main.conf:2: #include missing.conf: no such file"),
        ("[a]\njust words\n", "main.conf:2: expected `key = value`"),
        ("[a]\n#exec /bin/true\n", "main.conf:2: #exec"),
        ("[a\n", "main.conf:1: malformed category header"),
    ],
)
def test_parser_refuses_what_asterisk_refuses_with_file_and_line(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_file(write(tmp_path, "main.conf", text))
    assert str(exc.value).startswith(message)


def test_dialplan_reader_numbers_steps_and_keeps_labels(tmp_path: Path) -> None:
    path = write(tmp_path, "extensions.conf", (
        "[general]\nstatic = yes\n[ctx]\ninclude => other\n"
        "exten => s,1,NoOp(a, b)\n same => n(top),Set(X=${IF($[1 > 0]?a:b)})\n"
        " same => n,Hangup\nexten => _1XX,1,Dial(PJSIP/agent${EXTEN},30)\n[other]\n"
    ))  # fmt: skip
    ctx = dialplan(path)["ctx"]
    assert ctx.includes == ["other"]
    assert ctx.steps("s") == [
        (None, "NoOp", "a, b"),
        ("top", "Set", "X=${IF($[1 > 0]?a:b)}"),
        (None, "Hangup", ""),
    ]
    assert [s.priority for s in ctx.extensions["s"]] == [1, 2, 3]
    assert "general" not in dialplan(path)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (" same => n,NoOp()\n", "`same =>` before any `exten =>`"),
        ("exten => s,n,NoOp()\n", "priority `n` before priority 1"),
        ("exten => s,2,NoOp()\n", "s starts at priority 2"),
        ("exten => s,1,NoOp()\nexten => s,1,Hangup()\n", "priority 1 of s given twice"),
        ("exten => s,1,NoOp(\n", "unbalanced parentheses"),
        ("setting = 1\n", "'setting' is not a dialplan line"),
    ],
)
def test_dialplan_reader_refuses_broken_dialplans(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        dialplan(write(tmp_path, "extensions.conf", "[ctx]\n" + body))


def test_parser_reads_the_reference_asterisk_configs() -> None:
    """The configs captured from a real Asterisk 20 parse too (the reader is not just
    tailored to ours)."""
    for path in sorted(REFERENCE.glob("*.conf")):
        assert parse_file(path), path.name
    assert "sim-customers" in dialplan(REFERENCE / "extensions.conf")


# ----- every file ----------------------------------------------------------------------------
def test_every_shipped_asterisk_config_parses() -> None:
    files = sorted(ASTERISK.glob("*.conf"))
    names = {p.name for p in files}
    assert {"manager.conf", "http.conf", "ari.conf", "pjsip.conf", "extensions.conf",
            "extensions_paceline.conf", "features.conf", "modules.conf"} <= names  # fmt: skip
    for path in files:
        parse_file(path)  # raises ConfigError with file:line


def test_extensions_conf_includes_the_paceline_dialplan() -> None:
    contexts = plan()
    for name, context in dialplan(ASTERISK / "extensions_paceline.conf").items():
        assert name in contexts, "extensions.conf does not #include extensions_paceline.conf"
        assert contexts[name].where.file.name == "extensions_paceline.conf"
        assert contexts[name].extensions.keys() == context.extensions.keys()


# ----- contexts the backends use -----------------------------------------------------------
def test_every_context_of_the_ami_backend_is_defined_with_its_extension() -> None:
    contexts = plan()
    used = defaults(AmiTelephony, "_context")
    assert used, "AmiTelephony takes no *_context parameters any more: update this test"
    exten_of = {"outbound_context": OriginateRequest.__dataclass_fields__["extension"].default}
    for param, context in used.items():
        assert context in contexts, f"AmiTelephony({param}={context!r}) is not in extensions.conf"
        if param == "transfer_context":
            continue  # target extensions: see the transfer test
        exten = exten_of.get(param, "s")  # Redirects go to extension s, priority 1
        assert exten in contexts[context].extensions, f"[{context}] has no extension {exten}"
        assert contexts[context].extensions[exten][0].priority == 1


def test_the_ari_backend_amd_and_transfer_contexts_are_defined() -> None:
    contexts = plan()
    amd_context = defaults(AriTelephony, "amd_context")["amd_context"]
    amd_exten = defaults(AriTelephony, "amd_extension")["amd_extension"]
    assert amd_exten in contexts[amd_context].extensions
    steps = contexts[amd_context].steps(amd_exten)
    stasis = [data for _, app, data in steps if app == "Stasis"]
    assert stasis, f"[{amd_context}] never hands the call back to Stasis"
    # The app name comes from the channel (set on every originate) or is the default one.
    app_default = defaults(AriTelephony, "app")["app"]
    assert stasis[0].split(",")[0] in ("${PACELINE_APP}", app_default)
    transfer = defaults(AriTelephony, "transfer_context")["transfer_context"]
    assert transfer in contexts, f"AriTelephony's transfer_context {transfer!r} is not defined"


def test_paceline_contexts_run_the_steps_the_emulator_models() -> None:
    """The emulator is how every test exercises the dialplan: it must be this file's."""
    contexts = plan()
    modelled = [name for name in core.DIALPLAN if name.startswith("paceline-")]
    assert modelled, "sim.pbx.core.DIALPLAN has no paceline-* context"
    for name in modelled:
        assert name in contexts, f"the emulator models [{name}], extensions.conf lacks it"
        for pattern, modelled_steps in core.DIALPLAN[name]:
            ours = contexts[name].steps(pattern)
            assert [(label, app) for label, app, _ in modelled_steps] == [
                (label, app) for label, app, _ in ours
            ], f"[{name}] {pattern}"
            for (_, app, data), (_, _, conf_data) in zip(modelled_steps, ours, strict=True):
                if isinstance(data, str):  # a callable models an expression Asterisk computes
                    assert data == conf_data, f"[{name}] {pattern} {app}"
    # and the contexts the emulator runs that our contexts lead to (transfers go to [agents])
    for name, context in contexts.items():
        for steps in context.extensions.values():
            for step in steps:
                for _, target in _LOCAL.findall(step.data):
                    assert target in contexts, f"{step.where}: Local/...@{target} is undefined"
        for included in context.includes:
            assert included in contexts, f"[{name}] includes undefined [{included}]"


def test_the_ivr_contexts_queues_and_flows_are_the_run_configs() -> None:
    """The ARI run config's [ivr]: its Stasis app is the one [paceline-ivr] hands calls to, its
    flows (the folder compose mounts) load and validate with its routes, every group those
    flows transfer to is a queue of queues.conf (the default group endpoint dials the queue
    through [paceline-queue]), and the external transfers' context dials the trunk."""
    from dialer.service import load_ivr_flows
    from ivr.model import Transfer

    contexts = plan()
    config = load(run_config_for("ari"))
    ivr = config.ivr
    assert ivr is not None, "paceline-ari.toml has no [ivr] section"
    stasis = [data for steps in contexts["paceline-ivr"].extensions.values()
              for _, app, data in [(s.label, s.app, s.data) for s in steps] if app == "Stasis"]
    assert stasis and all(d.split(",")[0] == ivr.app for d in stasis), stasis
    host_flows = bind_mounts("paceline").get(str(ivr.flows))
    assert host_flows is not None, f"compose.yaml does not mount {ivr.flows} for the IVR"
    flows = load_ivr_flows(dataclasses.replace(ivr, flows=host_flows))
    assert ivr.default_flow in flows and set(ivr.routes.values()) <= set(flows)
    queues = set(categories(ASTERISK / "queues.conf")) - {"general"}
    groups = {n.target for f in flows.values() for n in f.nodes.values()
              if isinstance(n, Transfer) and n.kind in ("group", "queue")}
    assert groups and groups <= queues, f"no queue for groups {sorted(groups - queues)}"
    endpoint = _LOCAL.search(ivr.group_endpoint)
    assert endpoint and endpoint.group(2) == "paceline-queue", ivr.group_endpoint
    for context, app in (("paceline-queue", "Queue"), ("paceline-external", "Dial")):
        apps = [s.app for steps in contexts[context].extensions.values() for s in steps]
        assert app in apps, f"[{context}] never runs {app}()"


def test_goto_labels_exist() -> None:
    for context in plan().values():
        for exten, steps in context.extensions.items():
            labels = {s.label for s in steps if s.label} | {str(s.priority) for s in steps}
            for step in steps:
                if step.app not in ("Goto", "GotoIf"):
                    continue
                targets = step.data.rsplit("?", 1)[-1].split(":")
                for target in filter(None, (t.strip() for t in targets)):
                    assert "," not in target, f"{step.where}: cross-extension Goto not checked"
                    assert target in labels, f"{step.where}: no label {target!r} in {exten}"


def test_every_application_is_core_or_required_in_modules_conf() -> None:
    modules = one(ASTERISK / "modules.conf", "modules")
    required = set(modules.values("require")) | set(modules.values("preload-require"))
    for context in plan().values():
        for steps in context.extensions.values():
            for step in steps:
                if step.app in CORE_APPS:
                    continue
                assert step.app in APP_MODULES, f"{step.where}: which module has {step.app}()?"
                module = APP_MODULES[step.app]
                assert module in required, f"{step.where}: {step.app}() needs require = {module}"


def test_every_ari_resource_the_client_calls_is_required_in_modules_conf() -> None:
    source = (ROOT / "cti" / "ari" / "rest.py").read_text()
    resources = set(re.findall(r'request\(\s*"[A-Z]+",\s*f?"/([a-z_]+)', source))
    calls = source.count("self.request(")
    assert resources and len(re.findall(r'request\(\s*"[A-Z]+",\s*f?"/', source)) == calls, (
        "cti/ari/rest.py: a request path this test cannot read"
    )
    resources.add("events")  # the WebSocket (AriTelephony._open_ws)
    required = set(one(ASTERISK / "modules.conf", "modules").values("require"))
    for module in ("res_ari.so", "res_stasis.so", "app_stasis.so", "res_http_websocket.so"):
        assert module in required
    for resource in sorted(resources):
        assert f"res_ari_{resource}.so" in required, (
            f"ARI /{resource}: require res_ari_{resource}.so"
        )


def test_features_conf_codes_are_those_the_atxfer_actions_use() -> None:
    path = ASTERISK / "features.conf"
    assert one(path, "featuremap").get("atxfer") == core.ATXFER_CODE
    assert one(path, "general").get("atxferabort") == core.ATXFER_ABORT


def test_music_on_hold_classes_used_are_defined() -> None:
    classes = categories(ASTERISK / "musiconhold.conf")
    used = {defaults(AriTelephony, "moh_class")["moh_class"] or "default"}
    for context in plan().values():
        for steps in context.extensions.values():
            used |= {s.data.split(",")[0] or "default" for s in steps if s.app == "MusicOnHold"}
    for name in used:
        assert name in classes, f"music-on-hold class {name!r} is not in musiconhold.conf"
        assert classes[name].get("mode") == "files" and classes[name].get("directory")


# ----- endpoints ---------------------------------------------------------------------------
def test_agent_endpoints_are_complete_and_reachable_by_extension() -> None:
    agents = agent_endpoints()
    assert len(agents) >= 20, "agents are PJSIP endpoints agent101..: expected at least 20"
    auths, aors, contexts = pjsip("auth"), pjsip("aor"), plan()
    for name, endpoint in agents.items():
        auth, aor = endpoint.get("auth"), endpoint.get("aors")
        assert auth in auths and auths[auth].get("username") == name, f"{name}: auth"
        assert auths[auth].get("password"), f"{name}: no password"
        assert aor in aors and aors[aor].get("max_contacts"), f"{name}: aor"
        assert endpoint.get("direct_media") == "no", f"{name}: media must stay on Asterisk"
        assert csv(endpoint.get("allow")) >= {"ulaw", "alaw"}, f"{name}: codecs"
        assert endpoint.get("context") in contexts, f"{name}: context {endpoint.get('context')}"


def test_every_pjsip_object_is_complete() -> None:
    """No stray object: each has a known type, endpoints point at existing aors and auths,
    auths have a username and a password (a template that lost its `(!)` fails here)."""
    known = {"transport", "endpoint", "aor", "auth", "identify"}
    for category in parse_file(ASTERISK / "pjsip.conf"):
        if not category.is_template:
            assert category.get("type") in known, f"{category.where}: [{category.name}] type"
    aors, auths = pjsip("aor"), pjsip("auth")
    for name, endpoint in pjsip("endpoint").items():
        assert csv(endpoint.get("aors")) and csv(endpoint.get("aors")) <= set(aors), name
        assert endpoint.get("auth") is None or endpoint.get("auth") in auths, name
    for name, auth in auths.items():
        assert auth.get("username") and auth.get("password"), f"[{name}] auth"
    for name, identify in pjsip("identify").items():
        assert identify.get("endpoint") in pjsip("endpoint"), f"[{name}] identify"


def endpoints_dialled(context: Context, exten: str, depth: int = 0) -> list[str]:
    """The PJSIP endpoints that dialling `exten` in `context` rings: `Dial()` targets, with
    `${EXTEN}` filled in and `Local/<x>@<ctx>` hops followed."""
    assert depth < 5, f"Local/ loop from [{context.name}] {exten}"
    found = find_exten(context, exten)
    assert found is not None, f"[{context.name}] has no extension matching {exten}"
    where, pattern = found
    out: list[str] = []
    for step in where.extensions[pattern]:
        if step.app != "Dial":
            continue
        data = step.data.replace("${EXTEN}", exten)
        out += _PJSIP.findall(data)
        for local_exten, local_context in _LOCAL.findall(data):
            out += endpoints_dialled(plan()[local_context], local_exten, depth + 1)
    return out


def test_a_transfer_or_a_colleagues_call_to_an_agent_extension_rings_that_agent() -> None:
    """Extension NNN rings PJSIP/agentNNN: for an AMI transfer (paceline-transfer), an ARI
    transfer (its transfer_context) and a call from another agent's phone."""
    contexts = plan()
    starts = {
        "AMI transfer": defaults(AmiTelephony, "transfer_context")["transfer_context"],
        "ARI transfer": defaults(AriTelephony, "transfer_context")["transfer_context"],
    }
    for name, endpoint in agent_endpoints().items():
        exten = name.removeprefix("agent")
        for how, context in {**starts, "phone": endpoint.get("context") or ""}.items():
            dialled = endpoints_dialled(contexts[context], exten)
            assert dialled == [name], f"{how} to {exten} ([{context}]) rings {dialled}"


def test_every_literal_pjsip_endpoint_in_the_dialplan_exists() -> None:
    endpoints = pjsip("endpoint")
    for context in plan().values():
        for steps in context.extensions.values():
            for step in steps:
                for name in _PJSIP.findall(step.data):
                    if "$" not in name:
                        assert name in endpoints, f"{step.where}: PJSIP/{name} is not defined"


@pytest.mark.parametrize("config", RUN_CONFIGS, ids=lambda p: p.name)
def test_the_trunk_of_the_run_config_is_a_pjsip_endpoint(config: Path) -> None:
    trunk = pbx_of(config).trunk
    m = re.fullmatch(r"PJSIP/\{number\}@([\w-]+)", trunk)
    assert m, f"{config.name}: trunk {trunk!r} is not PJSIP/{{number}}@<endpoint>"
    name = m.group(1)
    endpoint = pjsip("endpoint").get(name)
    assert endpoint is not None, f"{config.name}: trunk endpoint {name!r} is not in pjsip.conf"
    aor = pjsip("aor").get(endpoint.get("aors") or "")
    assert aor is not None and (aor.get("contact") or "").startswith("sip:"), (
        f"[{name}] needs an aor with a contact: PJSIP/<number>@{name} dials <number> there"
    )
    assert endpoint.get("context") in plan(), f"[{name}] context is not in extensions.conf"
    assert endpoint.get("transport") in pjsip("transport")


# ----- users and permissions ---------------------------------------------------------------
def ami_actions() -> set[str]:
    """Every action name `AmiTelephony` sends (string constants passed to _act/action)."""
    tree = ast.parse((ROOT / "cti" / "ami" / "telephony.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("_act", "action", "list_action")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def test_the_ami_user_is_the_run_configs_with_the_permissions_the_backend_needs() -> None:
    config = run_config_for("ami")
    pbx = pbx_of(config)
    manager = ASTERISK / "manager.conf"
    general = one(manager, "general")
    assert general.get("enabled") == "yes"
    assert int(general.get("port") or 5038) == pbx.port
    user = one(manager, pbx.username)
    assert user.get("secret") == f"@{secret_env(pbx)}@", (
        f"manager.conf [{user.name}] secret must be filled from {secret_env(pbx)}"
    )
    # read: the classes of the events the tracker handles, and nothing else
    handled = set(ChannelTracker()._handlers)
    unknown = handled - EVENT_CLASS.keys()
    assert not unknown, f"the tracker handles {unknown}: add their manager class to EVENT_CLASS"
    assert csv(user.get("read")) == {EVENT_CLASS[e] for e in handled}
    # write: every action the backend sends is allowed, by classes it needs, none dangerous
    actions = {a.lower() for a in ami_actions()}
    assert {"originate", "redirect", "hangup", "coreshowchannels"} <= actions
    write = csv(user.get("write"))
    for action in sorted(actions):
        assert action in ACTION_CLASSES, f"which manager class does {action} need?"
        assert write & ACTION_CLASSES[action], f"write = {sorted(write)} cannot {action}"
    assert not write & DANGEROUS_CLASSES
    assert write <= set().union(*(ACTION_CLASSES[a] for a in actions)), "write grants more"
    # filters must not drop an event the tracker reads
    for event_filter in user.values("eventfilter"):
        m = re.fullmatch(r"!Event: (\w+)", event_filter)
        assert m, f"eventfilter {event_filter!r}: only `!Event: <name>` is checked here"
        assert m.group(1).lower() not in handled, f"{event_filter} drops an event we read"


def test_the_ami_user_may_log_in_from_the_compose_network_only() -> None:
    user = one(ASTERISK / "manager.conf", pbx_of(run_config_for("ami")).username)
    assert user.values("deny")[:1] == ["0.0.0.0/0.0.0.0"], "deny everyone first, then permit"
    permits = [ipaddress.ip_network(p, strict=True) for p in user.values("permit")]
    subnets = [
        ipaddress.ip_network(c["subnet"])
        for net in compose()["networks"].values()
        for c in net["ipam"]["config"]
    ]
    assert subnets, "compose.yaml: give the network a fixed subnet for manager.conf's permit"
    for subnet in subnets:
        assert any(subnet.subnet_of(p) for p in permits), f"{subnet} not permitted"  # type: ignore[arg-type]


def test_the_ari_user_and_http_server_are_the_run_configs() -> None:
    config = run_config_for("ari")
    pbx = pbx_of(config)
    ari = ASTERISK / "ari.conf"
    assert one(ari, "general").get("enabled") == "yes"
    user = one(ari, pbx.username)
    assert user.get("type") == "user" and user.get("read_only") == "no"
    assert user.get("password_format") == "plain"
    assert user.get("password") == f"@{secret_env(pbx)}@"
    assert pbx.app == defaults(AriTelephony, "app")["app"]
    http = one(ASTERISK / "http.conf", "general")
    assert http.get("enabled") == "yes" and http.get("bindaddr") == "0.0.0.0"
    m = re.fullmatch(r"http://([\w.-]+):(\d+)", pbx.url)
    assert m, f"{config.name}: url {pbx.url!r} is not http://host:port"
    assert m.group(1) == "asterisk" and int(m.group(2)) == int(http.get("bindport") or 0)


# ----- compose -----------------------------------------------------------------------------
def test_compose_runs_asterisk_20_postgres_16_and_paceline_in_order() -> None:
    data = compose()
    assert set(data["services"]) == {"db", "asterisk", "paceline"}
    assert service("db")["image"] == "postgres:16"
    dockerfile = DOCKER / service("asterisk")["build"] / "Dockerfile"
    assert re.search(r"^FROM andrius/asterisk:20\s*$", dockerfile.read_text(), re.M)
    build = service("paceline")["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).is_file()
    for name in data["services"]:
        assert service(name).get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
        assert service(name).get("networks") == ["paceline"], name
    depends = service("paceline")["depends_on"]
    assert depends == {
        "db": {"condition": "service_healthy"},
        "asterisk": {"condition": "service_healthy"},
    }


def bind_mounts(name: str) -> dict[str, Path]:
    """target -> source of the service's bind mounts (named volumes left out)."""
    out: dict[str, Path] = {}
    for volume in service(name).get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            out[target] = (DOCKER / source).resolve()
    return out


def test_every_mount_points_to_a_file_that_exists_where_the_program_looks() -> None:
    for name in compose()["services"]:
        for target, source in bind_mounts(name).items():
            assert source.exists(), f"{name}: mount source {source} for {target} does not exist"
    # Asterisk: the render script's default source folder is the mounted docker/asterisk.
    script = (ASTERISK / "render-config.sh").read_text()
    src = re.search(r"PACELINE_ASTERISK_SRC:-([^}]+)\}", script)
    assert src and bind_mounts("asterisk").get(src.group(1)) == ASTERISK
    # Paceline: the image's default --config and the compose command's default are mounted.
    mounts = bind_mounts("paceline")
    cmd = re.search(r'CMD \[.*"--config", "([^"]+)"', (DOCKER / "paceline/Dockerfile").read_text())
    assert cmd and cmd.group(1) in mounts
    command = " ".join(service("paceline")["command"])
    default = re.search(r"(/etc/paceline/)\$\{PACELINE_CONFIG:-([^}]+)\}", command)
    assert default and default.group(1) + default.group(2) in mounts
    for config in RUN_CONFIGS:
        assert f"/etc/paceline/{config.name}" in mounts, f"{config.name} is not mounted"
    # The information message: the campaign default `paceline/abandon` is a file Asterisk
    # finds under its sounds folder.
    default_sound = Campaign.__table__.c.abandon_message.default.arg
    folder = "/var/lib/asterisk/sounds/" + default_sound.rsplit("/", 1)[0]
    assert bind_mounts("asterisk").get(folder) == ASTERISK / "sounds"


def test_run_configs_point_at_the_compose_services_and_ports() -> None:
    http_port = int(one(ASTERISK / "http.conf", "general").get("bindport") or 0)
    ami_port = int(one(ASTERISK / "manager.conf", "general").get("port") or 0)
    for config in RUN_CONFIGS:
        pbx = pbx_of(config)
        if pbx.backend == "ami":
            assert (pbx.host, pbx.port) == ("asterisk", ami_port), config.name
        else:
            assert pbx.url == f"http://asterisk:{http_port}", config.name
        listen = load(config).http_listen or ""
        host, port = listen.rsplit(":", 1)
        assert host == "0.0.0.0", f"{config.name}: listen on all addresses inside the container"
        assert any(p.endswith(f":{port}:{port}") for p in service("paceline")["ports"])
        # the healthcheck asks the service's own status page, on that port
        check = " ".join(service("paceline")["healthcheck"]["test"])
        url = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", check)
        assert url and url.group(1) == port, f"healthcheck {check!r}: not port {port}"
        routes = (ROOT / "dialer" / "service.py").read_text()
        assert f'web.get("{url.group(2)}"' in routes, f"the service serves no {url.group(2)}"
        assert load(config).database is None, "the database URL comes from $PACELINE_DB"
    db_url = service("paceline")["environment"]["PACELINE_DB"]
    db = service("db")["environment"]
    assert db_url == (
        f"postgresql://{db['POSTGRES_USER']}:${{POSTGRES_PASSWORD}}@db:5432/{db['POSTGRES_DB']}"
    )


def test_published_sip_and_rtp_ports_are_asteriskss() -> None:
    ports = service("asterisk")["ports"]
    bind = one(ASTERISK / "pjsip.conf", "transport-udp", "transport").get("bind") or ""
    sip = bind.rsplit(":", 1)[1]
    assert f"{sip}:{sip}/udp" in ports
    rtp = one(ASTERISK / "rtp.conf", "general")
    span = f"{rtp.get('rtpstart')}-{rtp.get('rtpend')}"
    assert f"{span}:{span}/udp" in ports, f"publish rtp.conf's range {span}/udp"
    assert not any(p.split(":")[-1] in ("5038", "8088") for p in ports), (
        "AMI and ARI must not be published to every interface"
    )


def test_secrets_come_from_the_environment_and_reach_both_ends() -> None:
    example = (DOCKER / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", example, re.M))
    used = set(_COMPOSE_VAR.findall((DOCKER / "compose.yaml").read_text()))
    assert used == documented, f"compose.yaml uses {sorted(used)}, .env.example has {documented}"
    assert not (DOCKER / ".env").exists() or ".env" in (ROOT / ".gitignore").read_text()
    # every @NAME@ in the Asterisk configs is given to the asterisk service...
    placeholders = {
        name
        for path in ASTERISK.glob("*.conf")
        for category in parse_file(path)
        for option in category.options
        for name in _PLACEHOLDER.findall(option.value)
    }
    assert placeholders >= {"PACELINE_AMI_SECRET", "PACELINE_ARI_PASSWORD"}
    asterisk_env = service("asterisk")["environment"]
    assert placeholders <= set(asterisk_env), "a placeholder the container cannot fill"
    # ...and every secret a run config reads is given to paceline, from the same .env entry
    paceline_env = service("paceline")["environment"]
    for config in RUN_CONFIGS:
        name = secret_env(pbx_of(config))
        assert name in paceline_env, f"{config.name}: {name} is not passed to paceline"
        assert _COMPOSE_VAR.findall(paceline_env[name]) == _COMPOSE_VAR.findall(
            asterisk_env[name]
        ) == [name]  # fmt: skip
    for svc in compose()["services"]:
        for key, value in service(svc).get("environment", {}).items():
            if re.search(r"SECRET|PASSWORD", key):
                assert _COMPOSE_VAR.search(str(value)), f"{svc}: {key} is written in compose.yaml"


# ----- the render script ---------------------------------------------------------------------
def render(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("awk") is None:
        pytest.fail("render-config.sh needs awk (POSIX); install it")
    out = tmp_path / "etc"
    out.mkdir(exist_ok=True)
    return subprocess.run(
        ["sh", str(ASTERISK / "render-config.sh"), "echo", "started"],
        env={
            "PATH": os.environ["PATH"],
            "PACELINE_ASTERISK_SRC": str(ASTERISK),
            "PACELINE_ASTERISK_ETC": str(out),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


SECRETS = {
    "PACELINE_AMI_SECRET": "ami-s3cret",
    "PACELINE_ARI_PASSWORD": "ari&p@ss/word",
    "PACELINE_AGENT_PASSWORD": "agents-pw",
}


def test_render_fills_every_placeholder_and_then_runs_the_command(tmp_path: Path) -> None:
    result = render(tmp_path, **SECRETS)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "started\n"
    etc = tmp_path / "etc"
    assert sorted(p.name for p in etc.iterdir()) == sorted(p.name for p in ASTERISK.glob("*.conf"))
    for path in etc.iterdir():
        for category in parse_file(path):
            for option in category.options:
                assert not _PLACEHOLDER.search(option.value), f"{option.where}: left unfilled"
        assert path.stat().st_mode & 0o077 == 0o040, f"{path.name}: secrets readable by all"
    assert one(etc / "manager.conf", "paceline").get("secret") == "ami-s3cret"
    assert one(etc / "ari.conf", "paceline").get("password") == "ari&p@ss/word"
    assert (etc / "extensions_paceline.conf").read_text() == (
        ASTERISK / "extensions_paceline.conf"
    ).read_text()


@pytest.mark.parametrize(
    ("value", "complaint"),
    [(None, "set PACELINE_ARI_PASSWORD"), ("", "set PACELINE_ARI_PASSWORD"),
     ("pass;word", 'has a ";"'), ("password ", "spaces at an end")],
)  # fmt: skip
def test_render_refuses_a_missing_or_misread_secret_naming_the_line(
    tmp_path: Path, value: str | None, complaint: str
) -> None:
    env = dict(SECRETS)
    if value is None:
        del env["PACELINE_ARI_PASSWORD"]
    else:
        env["PACELINE_ARI_PASSWORD"] = value
    result = render(tmp_path, **env)
    assert result.returncode != 0 and "started" not in result.stdout
    line = next(
        i for i, text in enumerate((ASTERISK / "ari.conf").read_text().splitlines(), 1)
        if "@PACELINE_ARI_PASSWORD@" in text
    )  # fmt: skip
    assert f"ari.conf:{line}: @PACELINE_ARI_PASSWORD@" in result.stderr
    assert complaint in result.stderr
    if value:
        assert value.strip() not in result.stderr, "the secret was printed"


# ----- the docs ----------------------------------------------------------------------------
DOCS = [DOCKER / "README.md", ROOT / "docs" / "deploy.md", ROOT / "README.md"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_files_and_agent_endpoints_the_docs_name_exist(doc: Path) -> None:
    text = doc.read_text()
    for path in re.findall(r"\bdocker/[\w./-]+\w", text):
        assert (ROOT / path).exists(), f"{doc.name} names {path}, which does not exist"
    if doc.parent.name == "docs" or doc.parent == DOCKER:
        for name in re.findall(r"PJSIP/(agent\d+)", text):
            assert name in agent_endpoints(), f"{doc.name}: PJSIP/{name} is not in pjsip.conf"
