"""Decision rights, as pure functions the workflows' validators and handlers share: does a gate have its quorum
(per role and overall), would one more approval count, may a person take an action outside the gate.

Per-role quorum (``decision.require: {on_call: 1, safety_lead: 1}``) is a matching of distinct approvers to
role seats: one person fills one seat even when holding two roles, so two safety leads never stand in for an
on-call engineer.
"""

from __future__ import annotations

from dataclasses import dataclass

from playbooks.models import Playbook
from workflows.messages import Gate


def seats(require: dict[str, int]) -> list[str]:
    """One entry per required approver: ``{on_call: 1, safety_lead: 2}`` -> ``[on_call, safety_lead, safety_lead]``."""
    return [role for role, count in sorted(require.items()) for _ in range(count)]


def matched(require: dict[str, int], approvers: dict[str, list[str]]) -> int:
    """The most role seats distinct approvers can fill (bipartite matching; a person fills at most one seat)."""
    wanted = seats(require)
    seat_of: dict[int, str] = {}

    def place(person: str, visited: set[int]) -> bool:
        for i, role in enumerate(wanted):
            if role in approvers.get(person, []) and i not in visited:
                visited.add(i)
                if i not in seat_of or place(seat_of[i], visited):
                    seat_of[i] = person
                    return True
        return False

    return sum(place(person, set()) for person in sorted(approvers))


def quorum_met(gate: Gate) -> bool:
    """Enough distinct approvals, and every required role seat filled."""
    if len(gate.approvals) < gate.quorum:
        return False
    if not gate.require:
        return True
    return matched(gate.require, _approvers(gate)) == len(seats(gate.require))


def missing(gate: Gate) -> str:
    """What the gate still needs, in words (empty when the quorum is met)."""
    if quorum_met(gate):
        return ""
    need = []
    if gate.require:
        approvers = _approvers(gate)
        for role in sorted(gate.require):
            filled = matched({role: gate.require[role]}, approvers)
            if filled < gate.require[role]:
                need.append(f"{gate.require[role] - filled} {role}")
    extra = gate.quorum - len(gate.approvals) - sum(int(n.split()[0]) for n in need)
    if extra > 0:
        need.append(f"{extra} more from {', '.join(gate.roles)}")
    return " and ".join(need) or f"{gate.quorum - len(gate.approvals)} more"


def approval_refusal(gate: Gate, user: str, roles: list[str]) -> str | None:
    """Why one more approval by ``user`` (holding ``roles``) would not count toward the gate, or None if it does.

    It counts when it fills a required role seat, or when the overall quorum still has room beyond the seats.
    """
    if not gate.require:
        return None
    approvers = _approvers(gate)
    before = matched(gate.require, approvers)
    after = matched(gate.require, {**approvers, user: roles})
    if after > before:
        return None
    unseated_after = len(gate.approvals) + 1 - after
    free = gate.quorum - len(seats(gate.require))
    if unseated_after <= free:
        return None
    return (f"{user}'s approval cannot count: the gate still needs {missing(gate)}"
            f" (you hold {', '.join(roles) or 'no role'}; one person counts once)")


def _approvers(gate: Gate) -> dict[str, list[str]]:
    return {user: gate.approver_roles.get(user, []) for user in gate.approvals}


@dataclass(frozen=True)
class Permission:
    allowed: bool
    break_glass: bool
    refusal: str = ""


def may_act(playbook: Playbook, action: str, user: str, groups: list[str], reason: str) -> Permission:
    """May ``user`` take ``action`` (revert_now, abort, pause, resume)? Break-glass roles may, with a reason."""
    roles = playbook.action_roles(action)
    held = playbook.roles_of(user, groups)
    if set(held) & set(roles):
        return Permission(True, False)
    glass = playbook.decision.actions.break_glass
    if set(held) & set(glass):
        if not reason.strip():
            return Permission(False, True, f"{user} may {action} only as break-glass "
                                           f"({', '.join(sorted(set(held) & set(glass)))}), which needs a reason")
        return Permission(True, True)
    return Permission(False, False, f"{user} holds none of the roles that may {action} here "
                                    f"({', '.join(roles + glass) or 'none'})")


__all__ = ["Permission", "approval_refusal", "matched", "may_act", "missing", "quorum_met", "seats"]
