"""The flagd flag file: splits written atomically, idempotently, and served as intended by flagd's own evaluator."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import pytest
from openfeature.contrib.tools.flagd.core import FlagdCore
from openfeature.evaluation_context import EvaluationContext
from temporalio.exceptions import ApplicationError

from activities.flagd import FlagdFileProvider, previous_share
from playbooks.models import Target

REPO = Path(__file__).resolve().parents[2]


def target(key: str = "chat-model", **kw: str) -> Target:
    return Target(provider="flagd", key=key, **kw)


def existing_file(path: Path) -> dict:
    """A flag file someone else maintains: other flags, evaluators and flag-set metadata must survive."""
    doc = {
        "$schema": "https://flagd.dev/schema/v0/flags.json",
        "flags": {
            "new-ranker": {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "off",
                "targeting": {"fractional": [["on", 10], ["off", 90]]},
            },
            "chat-model": {
                "state": "ENABLED",
                "variants": {"previous": "gpt-a-2024", "candidate": "gpt-b-2025"},
                "defaultVariant": "candidate",
                "metadata": {"owner": "ml-platform"},
            },
        },
        "$evaluators": {"internal": {"ends_with": [{"var": "email"}, "@example.com"]}},
        "metadata": {"flagSetId": "ml"},
    }
    path.write_text(json.dumps(doc, indent=2))
    return doc


def served_share(path: Path, flag_key: str, previous_value: object, users: int = 4000) -> float:
    """Percent of ``users`` flagd's reference evaluator serves the previous variant, reading ``path``."""
    core = FlagdCore()
    core.set_flags(path.read_text())
    hits = 0
    for i in range(users):
        details = core.resolve_string_value(flag_key, "code-default", EvaluationContext(targeting_key=f"user-{i}"))
        hits += details.value == previous_value
    return hits / users * 100


async def test_split_is_written_as_fractional_targeting_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    before = existing_file(path)
    flags = FlagdFileProvider(path)

    assert await flags.set_previous_percent(target(), 30, "wf:stage:0") is True

    doc = json.loads(path.read_text())
    flag = doc["flags"]["chat-model"]
    assert flag["targeting"] == {"fractional": [
        {"cat": [{"var": "$flagd.flagKey"}, {"var": "targetingKey"}]}, ["previous", 30], ["candidate", 70]]}
    written_at = flag["metadata"].pop("unship_written_at")
    assert flag["metadata"] == {"owner": "ml-platform", "unship_idempotency_key": "wf:stage:0",
                                "unship_previous_percent": 30}
    # when the split was written, for the audit of a retried write (issue 13, defect 6)
    assert await flags.written_at(target(), "wf:stage:0") == datetime.fromisoformat(written_at)
    assert await flags.written_at(target(), "another-key") is None
    assert await flags.get_previous_percent(target()) == 30
    # Everything unship does not own is byte-for-byte what it was.
    assert doc["flags"]["new-ranker"] == before["flags"]["new-ranker"]
    assert {k: v for k, v in doc.items() if k != "flags"} == {k: v for k, v in before.items() if k != "flags"}
    assert list(doc["flags"]) == ["new-ranker", "chat-model"]
    # Nothing but the flag file (and its lock) is left in the folder: the temp file was renamed over it.
    left = sorted(p.name for p in tmp_path.iterdir())  # noqa: ASYNC240 - a test's own temp folder
    assert left == ["flags.json", "flags.json.lock"]


async def test_flagd_serves_the_written_share_to_users(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    existing_file(path)
    flags = FlagdFileProvider(path)
    assert served_share(path, "chat-model", "gpt-a-2024") == 0  # before: everyone on the candidate

    await flags.set_previous_percent(target(), 25, "wf:stage:0")
    assert abs(served_share(path, "chat-model", "gpt-a-2024") - 25) < 3

    await flags.set_previous_percent(target(), 100, "wf:stage:1")
    assert served_share(path, "chat-model", "gpt-a-2024") == 100
    assert json.loads(path.read_text())["flags"]["chat-model"]["defaultVariant"] == "previous"


async def test_users_already_moved_back_stay_back_when_the_share_grows(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    existing_file(path)
    flags = FlagdFileProvider(path)
    core = FlagdCore()

    def on_previous() -> set[str]:
        core.set_flags(path.read_text())
        return {f"u{i}" for i in range(2000) if core.resolve_string_value(
            "chat-model", "", EvaluationContext(targeting_key=f"u{i}")).value == "gpt-a-2024"}

    await flags.set_previous_percent(target(), 10, "wf:stage:0")
    first = on_previous()
    await flags.set_previous_percent(target(), 50, "wf:stage:1")
    assert first <= on_previous()


async def test_reapplying_the_same_key_and_split_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    existing_file(path)
    flags = FlagdFileProvider(path)
    assert await flags.set_previous_percent(target(), 50, "wf:stage:1") is True
    inode, text = path.stat().st_ino, path.read_text()

    # An activity retried after a crash: same key, same split.
    assert await flags.set_previous_percent(target(), 50, "wf:stage:1") is False
    assert path.stat().st_ino == inode and path.read_text() == text

    # A new step with its own key is a new write, even to the same split.
    assert await flags.set_previous_percent(target(), 50, "wf:emergency") is True
    assert path.stat().st_ino != inode


async def test_fractional_percent_keeps_two_decimals(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    existing_file(path)
    flags = FlagdFileProvider(path)
    await flags.set_previous_percent(target(), 12.5, "k")
    buckets = json.loads(path.read_text())["flags"]["chat-model"]["targeting"]["fractional"][1:]
    assert buckets == [["previous", 1250], ["candidate", 8750]]
    assert await flags.get_previous_percent(target()) == 12.5


async def test_file_mode_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    existing_file(path)
    path.chmod(0o640)
    await FlagdFileProvider(path).set_previous_percent(target(), 5, "k")
    assert path.stat().st_mode & 0o777 == 0o640


async def test_missing_flag_is_a_configuration_error_naming_file_and_flag(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    existing_file(path)
    flags = FlagdFileProvider(path)
    for call in (flags.get_previous_percent(target("no-such-flag")),
                 flags.set_previous_percent(target("no-such-flag"), 10, "k")):
        with pytest.raises(ApplicationError) as err:
            await call
        assert err.value.non_retryable
        assert str(path) in err.value.message and "no-such-flag" in err.value.message


async def test_missing_file_and_wrong_variants_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ApplicationError) as err:
        await FlagdFileProvider(tmp_path / "absent.json").get_previous_percent(target())
    assert err.value.non_retryable and "does not exist" in err.value.message

    path = tmp_path / "flags.json"
    existing_file(path)
    with pytest.raises(ApplicationError) as err:
        await FlagdFileProvider(path).set_previous_percent(target(previous_variant="v1"), 10, "k")
    assert err.value.non_retryable and "v1" in err.value.message

    path.write_text("{not json")
    with pytest.raises(ApplicationError) as err:
        await FlagdFileProvider(path).get_previous_percent(target())
    assert err.value.non_retryable and "not valid JSON" in err.value.message


async def test_ensure_flag_creates_file_and_flag_once(tmp_path: Path) -> None:
    path = tmp_path / "state" / "flags.json"
    flags = FlagdFileProvider(path)
    assert await flags.ensure_flag(target()) is True
    assert await flags.ensure_flag(target()) is False
    assert await flags.ensure_flag(target("image-model"), {"previous": {"model": "sd-1"},
                                                            "candidate": {"model": "sd-2"}}) is True
    doc = json.loads(path.read_text())
    assert doc["flags"]["chat-model"]["variants"] == {"previous": "previous", "candidate": "candidate"}
    assert doc["flags"]["chat-model"]["state"] == "ENABLED"
    assert await flags.get_previous_percent(target()) == 0
    assert served_share(path, "chat-model", "previous", users=500) == 0


def test_previous_share_reads_weights_like_flagd() -> None:
    def flag(targeting: object, default: str = "candidate") -> dict:
        return {"variants": {"previous": 1, "candidate": 2}, "defaultVariant": default, "targeting": targeting}

    assert previous_share(flag({"fractional": [["previous", 1], ["candidate", 3]]}), "previous") == 25
    assert previous_share(flag({"fractional": [["previous"], ["candidate"]]}), "previous") == 50
    assert previous_share(flag({"fractional": [["previous", -5], ["candidate", 5]]}), "previous") == 0
    assert previous_share(flag({}), "previous") == 0
    assert previous_share(flag(None, default="previous"), "previous") == 100
    assert previous_share(flag({"if": [{"var": "beta"}, "previous", "candidate"]}), "previous") is None


async def test_concurrent_writers_in_threads_and_another_process_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    path.write_text(json.dumps({"flags": {}}))
    keys = [f"model-{i}" for i in range(24)]
    setup = FlagdFileProvider(path)
    for key in keys:
        await setup.ensure_flag(target(key))

    # Another process writes the odd flags while two providers in this one write the even flags.
    script = textwrap.dedent(f"""
        import asyncio
        from pathlib import Path
        from activities.flagd import FlagdFileProvider
        from playbooks.models import Target
        async def main():
            flags = FlagdFileProvider(Path({str(path)!r}))
            await asyncio.gather(*(flags.set_previous_percent(Target(key=f"model-{{i}}"), i, f"proc:{{i}}")
                                   for i in range(1, 24, 2)))
        asyncio.run(main())
    """)
    other = await asyncio.create_subprocess_exec(sys.executable, "-c", script, cwd=REPO,
                                                 env={**os.environ, "PYTHONPATH": str(REPO)})
    a, b = FlagdFileProvider(path), FlagdFileProvider(path)
    await asyncio.gather(*((a if i % 4 else b).set_previous_percent(target(f"model-{i}"), i, f"here:{i}")
                           for i in range(0, 24, 2)))
    assert await asyncio.wait_for(other.wait(), 60) == 0

    reader = FlagdFileProvider(path)
    assert [await reader.get_previous_percent(target(k)) for k in keys] == list(range(24))


async def test_the_flag_says_which_release_its_candidate_serves(tmp_path: Path) -> None:
    provider = FlagdFileProvider(tmp_path / "flags.json")
    await provider.ensure_flag(target(), {"previous": "chat-v2.4.0", "candidate": "chat-v3.0.0"})
    assert (await provider.served_release(target()))[0] == "chat-v3.0.0"
    objects = FlagdFileProvider(tmp_path / "objects.json")
    await objects.ensure_flag(target(), {"previous": {"model": "a"}, "candidate": {"model": "llm-7b", "release": "r9"}})
    assert (await objects.served_release(target()))[0] == "r9"
    plain = FlagdFileProvider(tmp_path / "plain.json")
    await plain.ensure_flag(target())  # variants named after themselves: the flag does not say
    release, evidence = await plain.served_release(target())
    assert release is None and "names no release" in evidence


async def test_many_incidents_writing_at_once_each_get_their_own_answer(tmp_path: Path) -> None:
    """Writes that arrive together share a rewrite of the file: every split lands, a repeated key writes
    nothing, and a target the file cannot take fails alone, naming its flag."""
    path = tmp_path / "flags.json"
    existing_file(path)
    flags = FlagdFileProvider(path)
    keys = [f"model-{i}" for i in range(30)]
    for key in keys:
        await flags.ensure_flag(target(key))

    first = await asyncio.gather(*(flags.set_previous_percent(target(k), i, f"inc-{i}:revert:0")
                                   for i, k in enumerate(keys)))
    assert first == [True] * len(keys)
    again = await asyncio.gather(
        *(flags.set_previous_percent(target(k), i, f"inc-{i}:revert:0") for i, k in enumerate(keys)),
        flags.set_previous_percent(target("chat-model", previous_variant="old"), 10, "bad:revert:0"),
        flags.set_previous_percent(target("model-0"), 50, "inc-0:revert:1"),
        return_exceptions=True)
    assert again[:len(keys)] == [False] * len(keys)  # the same key and split: nothing written
    error = again[len(keys)]
    assert isinstance(error, ApplicationError) and error.non_retryable and "'chat-model'" in str(error)
    assert again[-1] is True  # asked after the repeat of model-0's first stage: applied after it

    reader = FlagdFileProvider(path)
    assert [await reader.get_previous_percent(target(k)) for k in keys] == [50.0] + [float(i) for i in range(1, 30)]
    doc = json.loads(path.read_text())
    assert doc["flags"]["new-ranker"]["targeting"] == {"fractional": [["on", 10], ["off", 90]]}  # others untouched
    assert doc["flags"]["chat-model"]["metadata"] == {"owner": "ml-platform"}  # the failed write changed nothing
