"""Load playbook YAML into validated snapshots, reporting every problem as ``file:line: field: message``.

The round-trip YAML loader keeps the line of every key and list item, so a pydantic error location such as
``("rollback", "stages", 1, "percent")`` can be pointed at the line a person has to edit. Cross-references
(unknown signals or roles) are checked here as well, so one run lists all of them, not just the first.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from importlib import resources
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarstring import FoldedScalarString, LiteralScalarString

from playbooks.models import Playbook, PlaybookSnapshot
from playbooks.rendering import message_kinds, review_templates, template_error

PLAYBOOK_SUFFIXES = (".yaml", ".yml")
SCENARIO_SUFFIXES = (".scenario.yaml", ".scenario.yml")
"""Tabletop scenarios (tabletop/scenarios.py) live next to playbooks; folder discovery skips them."""
MAX_VALUES = 100_000
"""A playbook is a few hundred values; more than this (after expanding aliases) is refused."""
ROOT_FIELD = "playbook"
"""The ``field`` of issues about the playbook as a whole."""

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class PlaybookIssue:
    """One problem in one playbook file, at the line to edit."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


class PlaybookError(Exception):
    """A playbook (or a library of them) is invalid; ``issues`` lists every problem found."""

    def __init__(self, issues: list[PlaybookIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues) or "invalid playbook")


# --- loading ---------------------------------------------------------------------------------------------


def load_playbook(path: str | Path) -> PlaybookSnapshot:
    """Read and validate one playbook file; raise PlaybookError listing every problem."""
    return load_playbook_text(read_source(path), str(path))


def read_source(path: str | Path, error: type[PlaybookError] | None = None) -> str:
    """The UTF-8 text of a playbook or scenario file; a missing or unreadable file is one ``file`` issue,
    raised as ``error`` (default ``PlaybookError``)."""
    source, raise_as = str(path), error or PlaybookError
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise raise_as([PlaybookIssue(source, 0, "file", "no such file")]) from None
    except UnicodeDecodeError as exc:
        raise raise_as([PlaybookIssue(source, 0, "file", f"not UTF-8 text: {exc.reason}")]) from None
    except OSError as exc:
        raise raise_as([PlaybookIssue(source, 0, "file", exc.strerror or str(exc))]) from None


def load_playbook_text(text: str, source: str = "<string>") -> PlaybookSnapshot:
    """Validate playbook YAML given as a string; ``source`` names it in issues and the snapshot."""
    tree = parse_yaml(text, source)
    if not isinstance(tree, CommentedMap):
        got = "an empty document" if tree is None else _type_name(plain_data(tree))
        message = f"expected a mapping of playbook fields, got {got}"
        raise PlaybookError([PlaybookIssue(source, _node_line(tree, 1), ROOT_FIELD, message)])

    locator = Locator(tree)
    references = list(_cross_reference_problems(tree))
    templates = list(_template_problems(tree))
    try:
        playbook = Playbook.model_validate(plain_data(tree))
    except TooLarge:
        message = f"more than {MAX_VALUES} values once YAML aliases are expanded; this is not a playbook"
        raise PlaybookError([PlaybookIssue(source, 1, ROOT_FIELD, message)]) from None
    except ValidationError as exc:
        problems = _merge(validation_problems(exc, tree), references)
        raise PlaybookError(issues_at(source, locator, [*problems, *templates])) from None
    if references or templates:  # the model agrees on cross-references today; ours stay authoritative
        raise PlaybookError(issues_at(source, locator, [*references, *templates]))
    return PlaybookSnapshot(playbook=playbook, content_hash=content_hash(playbook), source=source)


def content_hash(playbook: Playbook) -> str:
    """sha256 of the playbook's canonical JSON: same meaning, same hash, whatever the YAML layout."""
    canonical = json.dumps(_without_later_defaults(playbook.model_dump(mode="json")), sort_keys=True,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# Fields added to the language after its first release, with their defaults. Left out of the hash while at
# their default, so upgrading unship never changes the version of a playbook that does not use them.
_LATER_DEFAULTS: dict[str, dict[str, Any]] = {
    "confirmation": {"method": "k_of_m", "sequential": None},
    "signal": {"compare_to": "threshold"},
    "source": {"control": None},
    "target": {"component": None, "override_pending_changes": False, "release_key": None},
    "decision": {"require": {}, "actions": {"revert_now": None, "abort": None, "pause": None, "break_glass": []}},
    "rollback": {"on_target_held": "wait", "check_served_release": True, "on_drift": "gate"},
    # governance (docs/governance.md)
    "playbook": {"provenance": {"fields": {}}, "data": None,
                 "regulatory": {"reports": [], "active_users": None, "remind_ahead": 86400.0}},
    "review": {"tracker": {"kind": "store", "repository": None, "project": None, "issue_type": "Task",
                           "labels": ["post-incident"], "assignees": {}, "sync_every": 3600.0}},
}


def _without_later_defaults(data: dict[str, Any]) -> dict[str, Any]:
    def prune(node: Any, defaults: dict[str, Any]) -> None:
        if isinstance(node, dict):
            for key, default in defaults.items():
                if key in node and node[key] == default:
                    del node[key]

    prune(data, _LATER_DEFAULTS["playbook"])
    prune(data.get("review"), _LATER_DEFAULTS["review"])
    prune(data.get("confirmation"), _LATER_DEFAULTS["confirmation"])
    for target in (data.get("rollback") or {}).get("targets") or []:
        prune(target, _LATER_DEFAULTS["target"])
    for signal in data.get("signals") or []:
        prune(signal, _LATER_DEFAULTS["signal"])
        prune(signal.get("source") if isinstance(signal, dict) else None, _LATER_DEFAULTS["source"])
    rollback = data.get("rollback")
    for target in (rollback.get("targets") if isinstance(rollback, dict) else None) or []:
        prune(target, _LATER_DEFAULTS["target"])
    prune(data.get("decision"), _LATER_DEFAULTS["decision"])
    prune(rollback, _LATER_DEFAULTS["rollback"])
    return data


def parse_yaml(text: str, source: str) -> Any:
    yaml = YAML(typ="rt")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. a reused anchor: legal YAML, and stderr is for our issues
            return yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        message = (exc.problem or exc.context or "invalid YAML").strip()
        if exc.context and exc.problem:
            where = f" at line {exc.context_mark.line + 1}" if exc.context_mark else ""
            message += f" ({exc.context}{where})"
        raise PlaybookError([PlaybookIssue(source, line, "yaml", message)]) from None
    except YAMLError as exc:
        raise PlaybookError([PlaybookIssue(source, 1, "yaml", str(exc).strip())]) from None


class TooLarge(Exception):
    pass


def plain_data(node: Any, budget: list[int] | None = None) -> Any:
    """ruamel's round-trip types as plain Python values, so pydantic sees exactly what YAML says.

    Aliases are expanded; ``budget`` stops a few nested aliases ("billion laughs") from expanding forever.
    """
    budget = budget if budget is not None else [MAX_VALUES]
    budget[0] -= 1
    if budget[0] < 0:
        raise TooLarge
    if isinstance(node, dict):
        return {(plain_data(k, budget) if not isinstance(k, str) else str(k)): plain_data(v, budget) for k, v in node.items()}
    if isinstance(node, list):
        return [plain_data(v, budget) for v in node]
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    if isinstance(node, datetime):
        return datetime.fromisoformat(node.isoformat())
    if isinstance(node, date):
        return date(node.year, node.month, node.day)
    return node


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "mapping", list: "list", str: "string", bool: "boolean", int: "integer", float: "number"}.get(
        type(value), type(value).__name__
    )


# --- pydantic errors -> (location, message) ---------------------------------------------------------------

_UNION_TAG = re.compile(r"^[a-z_][a-z0-9_-]*(\[.*\])?$")
_PATH_PREFIX = re.compile(r"^([A-Za-z_][\w-]*(?:\.[\w-]+)*): (.+)$", re.DOTALL)
_QUOTED_FIELD = re.compile(r"^'([A-Za-z_]\w*)[:']")
_SLUG_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"  # playbooks.models.Slug
_NAMES = re.compile(r"unknown (?:signals|roles) (\[.*?\])")


def validation_problems(exc: ValidationError, tree: CommentedMap,
                         root: type[BaseModel] = Playbook) -> list[tuple[Loc, str]]:
    """Each pydantic error as (location in the YAML data, message); ``root`` is the model of the document."""
    problems: list[tuple[Loc, str]] = []
    unions: dict[Loc, tuple[list[str], Any]] = {}
    for error in exc.errors(include_url=False):
        loc, union_member = _data_loc(tuple(error["loc"]), tree, missing=error["type"] == "missing")
        message = _message(error)
        ctx = error.get("ctx") or {}
        if error["type"] == "union_tag_invalid":
            loc = (*loc, "kind")
            message = f"unknown kind {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
        elif error["type"] == "union_tag_not_found":
            message = f"missing {ctx.get('discriminator', 'kind')} (which kind of entry this is)"
        elif error["type"] == "extra_forbidden":
            allowed = _fields_at(loc[:-1], tree, root)
            message = f"unknown field {str(loc[-1])!r}" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
        if union_member:
            members, _ = unions.setdefault(loc, ([], error.get("input")))
            if not members:
                problems.append((loc, ""))  # placeholder keeps the order; filled below
            members.append(union_member)
            continue
        if not loc:
            match = _PATH_PREFIX.match(message)
            if match:
                loc = _split_path(match.group(1))
                message = match.group(2)
        problems.append((_refine(loc, message, tree), message))
    filled = []
    for loc, message in problems:
        if not message and loc in unions:
            members, value = unions[loc]
            if "a number" in members and "an integer" in members:
                members.remove("an integer")
            alternatives = ", ".join(members[:-1]) + f" or {members[-1]}" if len(members) > 1 else members[0]
            message = f"expected {alternatives}, got {_type_name(value)}"
        filled.append((loc, message))
    return filled


def _message(error: ErrorDetails) -> str:
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix):]
    if error["type"] == "missing":
        return "required field is missing"
    if error["type"] == "string_pattern_mismatch" and (error.get("ctx") or {}).get("pattern") == _SLUG_PATTERN:
        return f"{error.get('input')!r} is not a valid name: use lowercase letters, digits, '-', '_' or '.'"
    value = error.get("input")
    if value is None:
        message += " (got null)"
    elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
        shown = repr(value)
        message += f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
    return message


def _fields_at(loc: Loc, tree: Any, root: type[BaseModel] = Playbook) -> list[str]:
    """The field names the document's language allows at ``loc`` (empty when that cannot be told)."""
    annotation: Any = root
    node: Any = tree
    for part in loc:
        annotation = _unwrap(annotation, node)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(part, str):
            field = annotation.model_fields.get(part)
            if field is None:
                return []
            annotation = field.annotation
        elif get_origin(annotation) in (list, dict):
            annotation = get_args(annotation)[-1]
        else:
            return []
        node = _lookup(node, (part,))
    annotation = _unwrap(annotation, node)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _unwrap(annotation: Any, node: Any) -> Any:
    """Strip Annotated/Optional; pick the member of a discriminated union that the data's ``kind`` names."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            kind = node.get("kind") if isinstance(node, dict) else None
            chosen = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)
                      and "kind" in m.model_fields and m.model_fields["kind"].default == kind]
            if chosen:
                annotation = chosen[0]
            elif len(members) == 1:
                annotation = members[0]
            else:
                return annotation
        else:
            return annotation


def _data_loc(loc: Loc, tree: Any, missing: bool = False) -> tuple[Loc, str | None]:
    """Drop the parts pydantic adds for union members (``sql``, ``float``...) from an error location.

    Returns the location in the YAML data and, when the error is about one member of a plain union, that
    member's name (several such errors describe one problem).
    """
    node: Any = tree
    kept: list[str | int] = []
    for i, part in enumerate(loc):
        if isinstance(node, dict):
            key = _find_key(node, part)
            if key is not None:
                kept.append(part)
                node = node[key]
            elif part == node.get("kind"):
                continue  # discriminated union tag
            elif isinstance(part, str) and _UNION_TAG.match(part) and not (missing and i == len(loc) - 1):
                if i == len(loc) - 1:
                    return tuple(kept), _member_name(part)
                continue
            else:
                kept.append(part)  # a missing key: nothing below it exists
                node = _MISSING
        elif isinstance(node, list) and isinstance(part, int):
            kept.append(part)
            node = node[part] if 0 <= part < len(node) else _MISSING
        elif isinstance(part, str) and _UNION_TAG.match(part) and node is not _MISSING:
            if i == len(loc) - 1:
                return tuple(kept), _member_name(part)
            continue
        else:
            kept.append(part)
            node = _MISSING
    return tuple(kept), None


_MISSING = object()


def _member_name(tag: str) -> str:
    names = {"float": "a number", "int": "an integer", "str": "a string", "bool": "a boolean", "none": "null",
             "dict": "a mapping", "list": "a list"}
    return names.get(tag.split("[", 1)[0], tag)


def _find_key(node: dict[Any, Any], part: str | int) -> Any:
    if part in node:
        return part
    for key in node:
        if str(key) == str(part):
            return key
    return None


def _split_path(path: str) -> Loc:
    return tuple(int(p) if p.isdigit() else p for p in path.split("."))


def _refine(loc: Loc, message: str, tree: Any) -> Loc:
    """Point a model-level complaint at the field it is about, when the message says which."""
    node = _lookup(tree, loc)
    if node is _MISSING:
        return loc
    match = _QUOTED_FIELD.match(message)
    if match and isinstance(node, dict) and _find_key(node, match.group(1)) is not None:
        return (*loc, match.group(1))
    stages = node.get("stages") if isinstance(node, dict) else None
    if isinstance(stages, list) and message.startswith(("stage percentages", "the last stage")):
        percents = [s.get("percent") if isinstance(s, dict) else None for s in stages]
        index = len(stages) - 1
        if message.startswith("stage percentages"):
            index = next((i for i in range(1, len(percents)) if _le(percents[i], percents[i - 1])), index)
        target = (*loc, "stages", index)
        return (*target, "percent") if isinstance(stages[index], dict) and "percent" in stages[index] else target
    names = _NAMES.search(message)
    if names and isinstance(node, (dict, list)):
        wanted = set(ast.literal_eval(names.group(1)))
        for sub, value in _walk(node, loc):
            if isinstance(value, str) and value in wanted:
                return sub
    return loc


def _le(a: Any, b: Any) -> bool:
    try:
        return float(a) <= float(b)
    except (TypeError, ValueError):
        return False


def _lookup(tree: Any, loc: Loc) -> Any:
    node = tree
    for part in loc:
        if isinstance(node, dict) and _find_key(node, part) is not None:
            node = node[_find_key(node, part)]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            return _MISSING
    return node


def _walk(node: Any, loc: Loc) -> Iterator[tuple[Loc, Any]]:
    yield loc, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, (*loc, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, (*loc, i))


def _merge(validation: list[tuple[Loc, str]], references: list[tuple[Loc, str]]) -> list[tuple[Loc, str]]:
    """Our cross-reference problems (all of them) replace the first one the Playbook model validator reports."""
    kept = [(loc, msg) for loc, msg in validation if not (references and _is_reference(msg))]
    return kept + references


def _is_reference(message: str) -> bool:
    return message.startswith(("unknown signals", "unknown roles", "duplicate signal names", "check names"))


# --- cross-references ------------------------------------------------------------------------------------


def _cross_reference_problems(tree: CommentedMap) -> Iterator[tuple[Loc, str]]:
    """Every unknown signal or role name and every duplicate name, each at its own line.

    Works on the raw data so that it still reports when other fields are invalid.
    """
    signals = tree.get("signals")
    signal_names = _names(signals)
    seen: set[str] = set()
    for i, name in signal_names:
        if name in seen:
            yield ("signals", i, "name"), f"duplicate signal name {name!r}"
        seen.add(name)
    known_signals = sorted(seen)
    roles = tree.get("roles")
    known_roles = sorted(str(k) for k in roles) if isinstance(roles, dict) else []

    if signal_names:
        rule = _get(tree, "confirmation", "rule")
        if isinstance(rule, dict):
            for form in ("any_of", "all_of", "of"):
                yield from _unknown(("confirmation", "rule", form), rule.get(form), known_signals, "signal")
        stages = _get(tree, "rollback", "stages")
        for i, stage in enumerate(stages if isinstance(stages, list) else []):
            if isinstance(stage, dict):
                yield from _unknown(("rollback", "stages", i, "verify"), stage.get("verify"), known_signals, "signal")
    if known_roles:
        for field in ("roles", "investigation_roles"):
            yield from _unknown(("decision", field), _get(tree, "decision", field), known_roles, "role")
        yield from _unknown(("decision", "escalation", "roles"), _get(tree, "decision", "escalation", "roles"),
                           known_roles, "role")
        require = _get(tree, "decision", "require")
        if isinstance(require, dict):
            for name in require:
                if str(name) not in known_roles:
                    yield ("decision", "require", str(name)), f"unknown role {str(name)!r}; known: {known_roles}"
        for action in ("revert_now", "abort", "pause", "break_glass"):
            yield from _unknown(("decision", "actions", action), _get(tree, "decision", "actions", action),
                               known_roles, "role")
        tasks = _get(tree, "review", "tasks")
        for i, task in enumerate(tasks if isinstance(tasks, list) else []):
            if isinstance(task, dict):
                yield from _unknown(("review", "tasks", i, "owner"), task.get("owner"), known_roles, "role")
    checks_seen: set[str] = set()
    for i, name in _names(tree.get("integrity")):
        if name in checks_seen:
            yield ("integrity", i, "name"), f"duplicate check name {name!r}"
        checks_seen.add(name)


def _unknown(loc: Loc, values: Any, known: list[str], what: str) -> Iterator[tuple[Loc, str]]:
    """Each name in ``values`` (one name, or a list of them) that is not ``known``, at its own location."""
    if isinstance(values, str):
        if values not in known:
            yield loc, f"unknown {what} {values!r}; known: {known}"
    elif isinstance(values, list):
        for i, value in enumerate(values):
            if isinstance(value, str) and value not in known:
                yield (*loc, i), f"unknown {what} {value!r}; known: {known}"


def _template_problems(tree: CommentedMap) -> Iterator[tuple[Loc, str, int]]:
    """Message template overrides must name a message kind and compile; the review template must exist.

    The third item is how many lines below the key the problem is (block scalars start on the next line).
    """
    templates = _get(tree, "communications", "templates")
    kinds = message_kinds()
    if isinstance(templates, dict):
        for kind, text in templates.items():
            loc: Loc = ("communications", "templates", str(kind))
            if str(kind) not in kinds:
                yield loc, f"unknown message kind {str(kind)!r}; known: {', '.join(kinds)}", 0
            elif isinstance(text, str):
                error = template_error(text)
                if error:
                    line, message = error
                    block = isinstance(text, (LiteralScalarString, FoldedScalarString))
                    yield loc, message, line if block else 0
    review_template = _get(tree, "review", "template")
    if isinstance(review_template, str):
        if "{{" in review_template or "{%" in review_template:  # an inline template rather than a name
            error = template_error(review_template)
            if error:
                yield ("review", "template"), error[1], 0
        elif review_template not in review_templates():
            yield ("review", "template"), (f"no review template named {review_template!r}; "
                                           f"available: {', '.join(review_templates())}"), 0


def _names(items: Any) -> list[tuple[int, str]]:
    if not isinstance(items, list):
        return []
    return [(i, item["name"]) for i, item in enumerate(items)
            if isinstance(item, dict) and isinstance(item.get("name"), str)]


def _get(tree: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(tree, dict):
            return None
        tree = tree.get(key)
    return tree


# --- locations -> lines ------------------------------------------------------------------------------------


class Locator:
    """Finds the YAML line of a data location: the deepest key or list item that exists."""

    def __init__(self, tree: CommentedMap) -> None:
        self.tree = tree

    def line(self, loc: Loc) -> int:
        node: Any = self.tree
        line = _node_line(self.tree, 1)
        for part in loc:
            if isinstance(node, CommentedMap):
                key = _find_key(node, part)
                if key is None:
                    break
                line = _lc_line(lambda n=node, k=key: n.lc.key(k), line)
                node = node[key]
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
                line = _lc_line(lambda n=node, i=part: n.lc.item(i), line)
                node = node[part]
            else:
                break
        return line


def _lc_line(get: Any, fallback: int) -> int:
    try:
        return int(get()[0]) + 1
    except (KeyError, IndexError, TypeError, AttributeError):
        return fallback  # keys pulled in by a YAML merge (<<) have no position of their own


def _node_line(node: Any, fallback: int) -> int:
    lc = getattr(node, "lc", None)
    return lc.line + 1 if lc is not None and lc.line is not None else fallback


def _field(loc: Loc) -> str:
    return ".".join(str(p) for p in loc) or ROOT_FIELD


def issues_at(source: str, locator: Locator,
            problems: Iterable[tuple[Loc, str] | tuple[Loc, str, int]]) -> list[PlaybookIssue]:
    issues: list[PlaybookIssue] = []
    for loc, message, *offset in problems:
        issue = PlaybookIssue(source, locator.line(loc) + sum(offset), _field(loc), message)
        if issue not in issues:
            issues.append(issue)
    return sorted(issues, key=lambda i: i.line)


# --- many files --------------------------------------------------------------------------------------------


def discover(paths: Iterable[str | Path]) -> list[Path]:
    """Playbook files named by ``paths``: files as given, folders searched recursively for *.yaml / *.yml.

    A path that does not exist is returned as given, so loading it reports a "no such file" issue.
    Hidden folders (``.git``...) and tabletop scenarios (``*.scenario.yaml``) are skipped. The result is sorted and without duplicates.
    """
    found: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for candidate in path.rglob("*"):
                relative = candidate.relative_to(path).parts
                if (candidate.suffix in PLAYBOOK_SUFFIXES and candidate.is_file()
                        and not candidate.name.endswith(SCENARIO_SUFFIXES)
                        and not any(part.startswith(".") for part in relative)):
                    found.add(candidate)
        else:
            found.add(path)
    return sorted(found)


def validate_paths(paths: Iterable[str | Path]) -> tuple[list[PlaybookSnapshot], list[PlaybookIssue]]:
    """Load every playbook under ``paths``; return the valid snapshots and all issues (also duplicate names)."""
    snapshots: list[PlaybookSnapshot] = []
    issues: list[PlaybookIssue] = []
    for path in discover(paths):
        try:
            snapshots.append(load_playbook(path))
        except PlaybookError as exc:
            issues.extend(exc.issues)
    issues.extend(_duplicate_names(snapshots))
    return snapshots, issues


def _duplicate_names(snapshots: list[PlaybookSnapshot]) -> list[PlaybookIssue]:
    first: dict[str, PlaybookSnapshot] = {}
    issues = []
    for snapshot in snapshots:
        name = snapshot.playbook.name
        if name in first:
            issues.append(PlaybookIssue(
                snapshot.source, _name_line(snapshot.source), "name",
                f"playbook name {name!r} is already used by {first[name].source}",
            ))
        else:
            first[name] = snapshot
    return issues


def _name_line(source: str) -> int:
    try:
        tree = YAML(typ="rt").load(Path(source).read_text(encoding="utf-8"))
        return Locator(tree).line(("name",))
    except (OSError, YAMLError, AttributeError):
        return 1


def library_folder() -> Path:
    """The folder of example playbooks shipped with unship."""
    return Path(str(resources.files("playbooks") / "library"))


def load_library(folder: str | Path | None = None) -> dict[str, PlaybookSnapshot]:
    """All playbooks in ``folder`` (default: the shipped examples) by name; any issue raises PlaybookError."""
    snapshots, issues = validate_paths([folder if folder is not None else library_folder()])
    if issues:
        raise PlaybookError(issues)
    return {s.playbook.name: s for s in snapshots}


def validate_command(paths: list[str], as_json: bool = False) -> int:
    """``unship validate``: print issues to stderr (exit 1) or one OK line per file (exit 0); 2 if no files.

    With ``as_json`` one JSON object on stdout instead: ``ok``, the valid ``playbooks`` (file, name, version,
    content hash) and every problem (file, line, field, message); the exit codes stay the same.
    """
    files = discover(paths)
    if not files:
        where = ", ".join(paths) if paths else "the given paths"
        print(f"no playbook files (*.yaml, *.yml) found in {where}", file=sys.stderr)
        return 2
    snapshots, issues = validate_paths(files)
    if as_json:
        print(json.dumps({
            "ok": not issues,
            "playbooks": [{"file": s.source, "name": s.playbook.name, "version": s.version,
                           "content_hash": s.content_hash} for s in snapshots],
            "problems": [{"file": i.file, "line": i.line, "field": i.field, "message": i.message} for i in issues],
        }, indent=2))
        return 1 if issues else 0
    for issue in issues:
        print(issue, file=sys.stderr)
    if issues:
        return 1
    for snapshot in snapshots:
        print(f"OK {snapshot.source} ({snapshot.playbook.name}, version {snapshot.version})")
    return 0
