"""Rehearsals as a feature of their own: scenario files, recorded history, the scripted world, the script and
rehearsal workflows, backtests, the tabletop runner, its reports and scheduled rehearsals.

Depends on the engine (playbooks, activities, workflows), never the other way round; nothing in
playbooks/, activities/, workflows/ or workers/runtime/ imports it. The processes in workers/ wire it in.
"""
