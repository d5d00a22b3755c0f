"""Render chat messages and the post-incident review from the Jinja2 templates in ``templates/``.

Pure: the only thing read is the packaged templates. Undefined names are errors (StrictUndefined), so a typo
in a template fails loudly instead of sending a message with a hole in it; optional context keys are
written with ``| default(...)`` in the templates.

Templates come from playbooks, so they are untrusted code running on the worker (which holds every provider
token): they render in ``jinja2.sandbox.ImmutableSandboxedEnvironment`` (no ``_``-attributes, no function
internals, no mutation), and ``template_error`` reports a template that reaches for unsafe attributes before it
is ever loaded. Output is Slack mrkdwn / Markdown: free text in the context (reasons, annotations, alert
names) is escaped for Slack (``& < >``) in messages and for Markdown in the review, so nobody can forge a
mention, a link or a table row with a reason.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import quote

import jinja2
import jinja2.nodes
from jinja2.sandbox import (
    UNSAFE_ASYNC_GENERATOR_ATTRIBUTES,
    UNSAFE_COROUTINE_ATTRIBUTES,
    UNSAFE_FUNCTION_ATTRIBUTES,
    UNSAFE_GENERATOR_ATTRIBUTES,
    UNSAFE_METHOD_ATTRIBUTES,
    ImmutableSandboxedEnvironment,
)
from markdown_it import MarkdownIt

from playbooks.models import REGIME_DEADLINES, Regime, human_duration

REVIEW_TEMPLATE = "review.md.j2"
_TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.j2$")


def incident_link(base_url: str, incident_id: str) -> str:
    """The console page of ``incident_id`` under the console at ``base_url`` (what Slack and the CLI link to)."""
    return f"{base_url.rstrip('/')}/incidents/{quote(incident_id, safe=':@+=')}"


def message_kinds() -> list[str]:
    """The message kinds with a packaged template (the values of ``activities.contracts.MessageKind``)."""
    return sorted(name[: -len(".j2")] for name in _packaged_templates()
                  if not name.startswith(("_", "review", "report_")))


def render_message(kind: str, context: dict[str, Any], overrides: dict[str, str] | None = None) -> str:
    """The chat message for ``kind``; a playbook's template override for that kind wins over the packaged one.

    Raises ValueError naming the kind when there is no template for it or the template fails to render.
    """
    override = (overrides or {}).get(kind)
    try:
        if override is not None:
            template = _environment().from_string(override)
        elif kind in message_kinds():
            template = _environment().get_template(f"{kind}.j2")
        else:
            raise ValueError(f"no message template for kind {kind!r}; known kinds: {', '.join(message_kinds())}")
        return _tidy(template.render(**slack_escaped(context)))
    except jinja2.TemplateError as exc:
        origin = "the playbook's override" if override is not None else f"templates/{kind}.j2"
        raise ValueError(f"message template {kind!r} ({origin}) failed: {_describe(exc)}") from exc


def render_review(status: dict[str, Any], template: str | None = None,
                  playbook: dict[str, Any] | None = None) -> str:
    """The post-incident review (Markdown) for a closed incident.

    ``status`` is ``IncidentStatus.model_dump(mode="json")``; its ``playbook`` key may hold the Playbook dump
    (as the review workflow sends it) or just the name, with the dump passed as ``playbook``. Optional keys
    ``review_tasks`` (title, owner, owners, due) and ``deadlines`` (what, at) are used when present and
    derived from the playbook otherwise. ``template`` is a packaged template name (``review.md.j2``) or the
    text of a template.
    """
    context = _review_context(status, playbook)
    name = template or REVIEW_TEMPLATE
    try:
        if _TEMPLATE_NAME.match(name):
            if name not in _packaged_templates():
                raise ValueError(f"no review template named {name!r}; packaged: {REVIEW_TEMPLATE}")
            compiled = _environment().get_template(name)
        else:
            compiled = _environment().from_string(name)
        return _tidy(compiled.render(**context)) + "\n"
    except jinja2.TemplateError as exc:
        raise ValueError(f"review template {name if _TEMPLATE_NAME.match(name) else '(inline)'} failed: "
                         f"{_describe(exc)}") from exc


_REPORT_CSS = """
@page { size: A4; margin: 20mm 18mm; }
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; font-size: 10.5pt; line-height: 1.45; color: #111; }
h1 { font-size: 16pt; border-bottom: 2px solid #333; padding-bottom: 4pt; }
h2 { font-size: 12.5pt; margin-top: 16pt; page-break-after: avoid; }
table { border-collapse: collapse; width: 100%; margin: 6pt 0; page-break-inside: auto; }
tr { page-break-inside: avoid; }
th, td { border: 1px solid #999; padding: 3pt 5pt; vertical-align: top; text-align: left; }
blockquote { border-left: 3px solid #c00; margin: 8pt 0; padding: 2pt 8pt; color: #444; }
code { font-family: "DejaVu Sans Mono", monospace; font-size: 9.5pt; }
"""


def render_report(regime: Regime, context: dict[str, Any]) -> tuple[str, str]:
    """The draft of a regulatory report for ``regime``: (Markdown, print-ready HTML).

    Rendered in the same sandboxed Jinja2 environment (and filters) as the review; the HTML is the Markdown
    converted (raw HTML in the data is escaped, never passed through) inside a page with print CSS (A4).
    """
    name = f"report_{regime.value}.md.j2"
    try:
        markdown = _tidy(_environment().get_template(name).render(**context)) + "\n"
    except jinja2.TemplateError as exc:
        raise ValueError(f"report template {name} failed: {_describe(exc)}") from exc
    title = markdown.splitlines()[0].lstrip("# ").strip() if markdown.strip() else regime.value
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    html = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_escape(title)}</title>"
            f"<style>{_REPORT_CSS}</style></head>\n<body>\n{body}</body></html>\n")
    return markdown, html


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def template_error(text: str) -> tuple[int, str] | None:
    """Where and why a template cannot be used (1-based line within ``text``), or None when it can: it does not
    compile, or it reaches for an attribute the sandbox refuses (``__class__``, ``__globals__``, ``mro`` ...)."""
    try:
        tree = _environment().parse(text)
    except jinja2.TemplateSyntaxError as exc:
        return exc.lineno or 1, f"template does not compile: {exc.message or 'syntax error'}"
    for node in tree.find_all((jinja2.nodes.Getattr, jinja2.nodes.Getitem)):
        name: object = None
        if isinstance(node, jinja2.nodes.Getattr):
            name = node.attr
        elif isinstance(node, jinja2.nodes.Getitem) and isinstance(node.arg, jinja2.nodes.Const):
            name = node.arg.value
        if isinstance(name, str) and _unsafe_attribute(name):
            return node.lineno or 1, (f"template uses the unsafe attribute {name!r}: templates run sandboxed and "
                                      "may only read the message context")
    return None


_UNSAFE_NAMES = (UNSAFE_FUNCTION_ATTRIBUTES | UNSAFE_METHOD_ATTRIBUTES | UNSAFE_GENERATOR_ATTRIBUTES
                 | UNSAFE_COROUTINE_ATTRIBUTES | UNSAFE_ASYNC_GENERATOR_ATTRIBUTES | {"mro"})


def _unsafe_attribute(name: str) -> bool:
    return name.startswith("_") or name in _UNSAFE_NAMES


def review_templates() -> list[str]:
    """The packaged review document templates a playbook's ``review.template`` may name."""
    return sorted(name for name in _packaged_templates() if name.startswith("review"))


# --- environment ---------------------------------------------------------------------------------------------


@cache
def _packaged_templates() -> frozenset[str]:
    folder = resources.files("playbooks") / "templates"
    return frozenset(entry.name for entry in folder.iterdir() if entry.name.endswith(".j2"))


def _load(name: str) -> str | None:
    if name not in _packaged_templates():
        return None
    return (resources.files("playbooks") / "templates" / name).read_text(encoding="utf-8")


@cache
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        loader=jinja2.FunctionLoader(_load),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters.update(
        mention=mention, when=when, duration=duration, num=num, pct=pct, cell=cell, verdict_icon=verdict_icon,
        md=markdown_escape,
    )
    return env


def _describe(exc: jinja2.TemplateError) -> str:
    line = getattr(exc, "lineno", None)
    return f"{type(exc).__name__} at line {line}: {exc.message}" if line else f"{type(exc).__name__}: {exc.message}"


def _tidy(text: str) -> str:
    """No runs of blank lines and no trailing spaces, whatever the optional sections left out."""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out)


# --- filters -----------------------------------------------------------------------------------------------


def mention(who: Any) -> str:
    """A Slack mention: ``U…``/``W…`` users as ``<@U…>``, ``S…`` user groups as ``<!subteam^S…>``, else ``@name``."""
    text = str(who)
    if re.fullmatch(r"[UW][A-Z0-9]{6,}", text):
        return f"<@{text}>"
    if re.fullmatch(r"S[A-Z0-9]{6,}", text):
        return f"<!subteam^{text}>"
    if text.startswith(("@", "#", "<")):
        return text
    return f"@{text}"


def when(value: Any) -> str:
    """An ISO timestamp as ``2025-03-04 10:15:07 UTC``; anything else unchanged ('—' for nothing)."""
    if value is None or value == "":
        return "—"
    moment = _parse_time(value)
    if moment is None:
        return str(value)
    suffix = " UTC" if moment.utcoffset() == timedelta(0) else moment.strftime(" %z")
    return moment.strftime("%Y-%m-%d %H:%M:%S") + suffix


def duration(value: Any) -> str:
    """Seconds (or a timedelta) as ``1h30m``; None as '—'."""
    if value is None or value == "":
        return "—"
    if isinstance(value, timedelta):
        return human_duration(value)
    try:
        return human_duration(timedelta(seconds=float(value)))
    except (TypeError, ValueError):
        return str(value)


def num(value: Any) -> str:
    """A measured value, compactly (``0.0123``, ``41.7``); None as 'no data'."""
    if value is None:
        return "no data"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.4g}"


def pct(value: Any) -> str:
    """A share of users: ``50%``, ``12.5%``."""
    if value is None:
        return "—"
    try:
        return f"{float(value):g}%"
    except (TypeError, ValueError):
        return str(value)


def cell(value: Any) -> str:
    """Text safe inside a Markdown table cell: one line, Markdown shown as written (no pipes, links, HTML)."""
    return markdown_escape(value)


_SLACK_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_MARKDOWN_SPECIAL = re.compile(r"([\\|\[\]<])")


_FREE_TEXT_KEYS = frozenset({"reason", "annotations", "message", "user", "by"})
"""Context keys (at any depth) whose values people or alert senders typed."""


def slack_escaped(value: Any, free: bool = False) -> Any:
    """``value`` with the free text (``_FREE_TEXT_KEYS``) escaped for Slack mrkdwn (``&``, ``<``, ``>``).

    Slack reads ``<@U…>``, ``<!channel>`` and ``<http://…|text>`` as mentions and links: a reason or an alert
    annotation must never become one. Mentions the templates make themselves (the ``mention`` filter) are
    produced from ids, so they stay live.
    """
    if isinstance(value, str):
        return value.translate(_SLACK_ESCAPES) if free else value
    if isinstance(value, dict):
        return {k: slack_escaped(v, free or k in _FREE_TEXT_KEYS) for k, v in value.items()}
    if isinstance(value, list):
        return [slack_escaped(v, free) for v in value]
    return value


def markdown_escape(value: Any) -> str:
    """Free text on one line, safe in Markdown prose and table cells: no cell breaks, links or HTML."""
    if value is None:
        return ""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(value).split()))


def verdict_icon(verdict: Any) -> str:
    return {"approve": ":white_check_mark:", "reject": ":x:"}.get(str(verdict), ":grey_question:")


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


# --- the review context ------------------------------------------------------------------------------------------


def _review_context(status: dict[str, Any], playbook: dict[str, Any] | None) -> dict[str, Any]:
    """The status plus what the review derives from it: durations, per-signal summary, tasks, deadlines."""
    context = dict(status)
    spec = playbook if playbook is not None else status.get("playbook")
    spec = spec if isinstance(spec, dict) else {}
    context["spec"] = spec
    context["playbook_name"] = spec.get("name") or str(status.get("playbook") or "?")
    started = _parse_time(status.get("started_at"))

    def since(start_key: str, end_key: str) -> float | None:
        start, end = _parse_time(status.get(start_key)), _parse_time(status.get(end_key))
        return (end - start).total_seconds() if start and end else None

    context["durations"] = [
        {"what": label, "seconds": since(a, b)}
        for label, a, b in (
            ("Alert to confirmed breach", "started_at", "detected_at"),
            ("Confirmed breach to decision", "detected_at", "decided_at"),
            ("Alert to first users moved back", "started_at", "first_revert_at"),
            ("Alert to all users moved back", "started_at", "full_revert_at"),
            ("Alert to incident closed", "started_at", "closed_at"),
        )
    ]
    context["signal_summary"] = _signal_summary(status.get("evidence") or [], spec)
    context["timeline"] = sorted(status.get("audit") or [], key=lambda e: (str(e.get("at", "")), e.get("seq", 0)))
    roles = spec.get("roles") or {}
    review = spec.get("review") or {}
    tasks = status.get("review_tasks")
    if isinstance(tasks, list):
        tasks = [dict(t) for t in tasks if isinstance(t, dict)]
    else:
        tasks = [
            {"title": t.get("title", ""), "owner": t.get("owner", ""),
             "owners": sorted((roles.get(t.get("owner")) or {}).get("users") or []),
             "due": (started + timedelta(seconds=float(t.get("due") or 0))).isoformat() if started else None}
            for t in review.get("tasks") or []
        ]
    for task in tasks:
        role = roles.get(task.get("owner")) or {}
        task.setdefault("owners", role.get("users") or [])
        task.setdefault("groups", role.get("groups") or [])
    context["review_tasks"] = tasks
    deadlines = status.get("deadlines")
    if not isinstance(deadlines, list):
        deadlines = []
        for key, what in (("regulatory_report_due", "regulatory_report_due"), ("purge_outputs_after", "purge_due")):
            if review.get(key) is not None and started:
                at = started + timedelta(seconds=float(review[key]))
                deadlines.append({"what": what, "at": at.isoformat()})
        detected = _parse_time(status.get("detected_at")) or started
        for report in (spec.get("regulatory") or {}).get("reports") or []:
            regime = Regime(report.get("regime"))
            due = report.get("due")
            delay = timedelta(seconds=float(due)) if due is not None else REGIME_DEADLINES[regime]
            if detected:
                deadlines.append({"what": f"{regime.value} report due", "at": (detected + delay).isoformat()})
        data = spec.get("data") or {}
        for what, seconds in (("retention_ends", data.get("retain")),
                              ("purge_due", (data.get("purge") or {}).get("after"))):
            if seconds is not None and started:
                deadlines.append({"what": what, "at": (started + timedelta(seconds=float(seconds))).isoformat()})
        deadlines.sort(key=lambda d: d["at"])
    context["deadlines"] = deadlines
    return context


def _signal_summary(evidence: list[dict[str, Any]], spec: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per signal: how often it was polled and breached, its worst and last values."""
    directions = {s.get("name"): (s.get("threshold") or {}).get("direction", "above")
                  for s in spec.get("signals") or []}
    rows: dict[str, dict[str, Any]] = {}
    for obs in evidence:
        name = str(obs.get("signal", "?"))
        row = rows.setdefault(name, {"signal": name, "category": obs.get("category", ""), "polls": 0,
                                     "breaches": 0, "no_data": 0, "worst": None, "last": None,
                                     "threshold": obs.get("threshold", ""), "detail": ""})
        row["polls"] += 1
        measurement = obs.get("measurement")
        row["breaches"] += measurement == "breach"
        row["no_data"] += measurement == "no_data"
        value = obs.get("value")
        row["last"] = value
        if obs.get("detail"):
            row["detail"] = obs["detail"]
        if isinstance(value, (int, float)):
            worse = max if directions.get(name, "above") == "above" else min
            row["worst"] = value if row["worst"] is None else worse(row["worst"], value)
    return list(rows.values())
