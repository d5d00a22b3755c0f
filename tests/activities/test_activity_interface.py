"""The workflows call activities through ``IncidentActivities`` (typed references, no implementation import);
the worker registers ``RollbackActivities``. These must name the same activities with the same types, or a
workflow would schedule an activity no worker runs."""

from __future__ import annotations

import inspect
import typing

from temporalio import activity

from activities.contracts import IncidentActivities
from activities.rollback import RollbackActivities


def _activity_methods(cls: type) -> dict[str, str]:
    found = {}
    for name, member in inspect.getmembers(cls, inspect.isfunction):
        definition = activity._Definition.from_callable(member)
        if definition is not None:
            found[name] = definition.name
    return found


def test_every_interface_activity_is_implemented_under_the_same_name() -> None:
    interface = _activity_methods(IncidentActivities)
    implementation = _activity_methods(RollbackActivities)
    assert interface, "the interface declares no activity"
    assert implementation == interface


def test_implementations_take_and_return_the_interface_types() -> None:
    for name in _activity_methods(IncidentActivities):
        declared = typing.get_type_hints(getattr(IncidentActivities, name))
        implemented = typing.get_type_hints(getattr(RollbackActivities, name))
        assert implemented == declared, f"{name}: {implemented} != {declared}"


def test_the_worker_registers_every_activity_once(tmp_path: object) -> None:
    acts = RollbackActivities.__new__(RollbackActivities)
    registered = [activity._Definition.must_from_callable(fn).name for fn in acts.all()]
    assert sorted(registered) == sorted(_activity_methods(IncidentActivities).values())
