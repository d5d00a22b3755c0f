"""Cohort splits in an OpenFeature flagd flag file (the embedded default flag system).

The file is the JSON a ``flagd start --uri file:...`` server (or an in-process flagd provider) serves. A
split is written as flagd ``fractional`` targeting::

    {"fractional": [{"cat": [{"var": "$flagd.flagKey"}, {"var": "targetingKey"}]},
                    ["previous", 30], ["candidate", 70]]}

Every write replaces the file atomically (temp file in the same folder, fsync, ``os.replace``) because flagd
watches it and a plain write would be seen half-done. Writers hold an exclusive ``flock`` on a sidecar
``<file>.lock`` so concurrent writers, in this process or another, never lose each other's updates.

Group commit: splits requested while a rewrite is under way are applied together by the next one (in the order
they were asked for, each with its own idempotency check and its own answer or error), so many incidents
reverting at once cost a few rewrites of the file, not one synced rewrite each.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from activities.errors import configuration_error
from activities.routing import named_release
from playbooks.models import Target

SCHEMA = "https://flagd.dev/schema/v0/flags.json"
BUCKETING = {"cat": [{"var": "$flagd.flagKey"}, {"var": "targetingKey"}]}
KEY_FIELD = "unship_idempotency_key"
PERCENT_FIELD = "unship_previous_percent"
WRITTEN_AT_FIELD = "unship_written_at"


@dataclass
class _Write:
    """One requested split, waiting for the next rewrite of the file."""

    target: Target
    percent: float
    key: str
    done: asyncio.Future[bool]


def split_weights(percent: float) -> tuple[int, int]:
    """Integer (previous, candidate) weights for ``percent`` on previous.

    Whole percentages are written as weights out of 100, the form every flagd version reads. Fractional ones
    (e.g. 12.5) become weights out of 10000: flagd weights are relative integers, so the share stays exact
    to 0.01 points.
    """
    if float(percent).is_integer():
        prev = int(percent)
        return prev, 100 - prev
    prev = round(percent * 100)
    return prev, 10_000 - prev


def fractional_targeting(target: Target, percent: float) -> dict[str, Any]:
    """The flagd targeting rule that sends ``percent`` of users to the previous variant."""
    prev, cand = split_weights(percent)
    return {"fractional": [BUCKETING, [target.previous_variant, prev], [target.candidate_variant, cand]]}


def previous_share(flag: dict[str, Any], previous_variant: str) -> float | None:
    """Percent of users a flag definition sends to ``previous_variant``; None when it cannot be told.

    Weights are relative (share = weight / sum; as in flagd a missing weight counts as 1 and a negative
    one as 0). Without targeting
    everyone gets ``defaultVariant``. Targeting other than a top-level ``fractional`` (e.g. ``if`` rules)
    cannot be read as one share, so the answer is None.
    """
    targeting = flag.get("targeting")
    if not targeting:
        return 100.0 if flag.get("defaultVariant") == previous_variant else 0.0
    if not isinstance(targeting, dict) or set(targeting) != {"fractional"}:
        return None
    buckets = [b for b in targeting["fractional"] if isinstance(b, list) and b]
    total = 0.0
    prev = 0.0
    for bucket in buckets:
        weight = max(0.0, float(bucket[1])) if len(bucket) > 1 else 1.0
        total += weight
        if bucket[0] == previous_variant:
            prev += weight
    if total <= 0:
        return None
    return round(prev / total * 100, 6)


class FlagdFileProvider:
    """A ``FlagProvider`` for targets with ``provider: flagd``, backed by one flagd JSON flag file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock = asyncio.Lock()
        self._pending: list[_Write] = []
        self._committer: asyncio.Task[None] | None = None

    # --- FlagProvider -----------------------------------------------------------------------------------

    async def set_previous_percent(self, target: Target, percent: float, idempotency_key: str) -> bool:
        """Write the split for ``target``; False (nothing written) if this key already applied this split."""
        if not 0 <= percent <= 100:
            raise configuration_error("flagd", self._obj(target), f"percent must be within 0..100, got {percent}")
        write = _Write(target, float(percent), idempotency_key, asyncio.get_running_loop().create_future())
        self._pending.append(write)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit())
        return await write.done

    async def get_previous_percent(self, target: Target) -> float | None:
        """Read the file back: the percent of users the flag sends to the previous variant."""
        doc = await asyncio.to_thread(self._read, target)
        return previous_share(self._flag(doc, target), target.previous_variant)

    async def written_at(self, target: Target, idempotency_key: str) -> datetime | None:
        """When the split now in the file was written with ``idempotency_key`` (None: another key wrote it)."""
        doc = await asyncio.to_thread(self._read, target)
        metadata = self._flag(doc, target).get("metadata") or {}
        if metadata.get(KEY_FIELD) != idempotency_key or not isinstance(metadata.get(WRITTEN_AT_FIELD), str):
            return None
        try:
            return datetime.fromisoformat(metadata[WRITTEN_AT_FIELD])
        except ValueError:
            return None

    # --- setup ---------------------------------------------------------------------------------------------

    async def served_release(self, target: Target) -> tuple[str | None, str]:
        """The release the flag's candidate variant serves: the variant's value when it is a release name (a
        string other than the variant's own name, or an object with ``release``/``version``/``model``), or the
        flag's ``metadata.candidate_release``. None when the flag does not say."""
        doc = await asyncio.to_thread(self._read, target)
        flag = self._flag(doc, target)
        value = named_release((flag.get("variants") or {}).get(target.candidate_variant), target.release_key)
        if value is not None and value != target.candidate_variant:
            return value, f"flagd {target.key}: variant {target.candidate_variant!r} serves {value!r}"
        metadata = flag.get("metadata") or {}
        stated = metadata.get(target.release_key or "candidate_release") if isinstance(metadata, dict) else None
        if isinstance(stated, str) and stated:
            return stated, f"flagd {target.key}: metadata.candidate_release is {stated!r}"
        return None, f"flagd {target.key}: the candidate variant names no release"

    async def ensure_flag(self, target: Target, variants: dict[str, object] | None = None) -> bool:
        """Create the flag (everyone on the candidate) if the file or the flag is missing; True if created."""
        values = variants or {target.previous_variant: target.previous_variant,
                              target.candidate_variant: target.candidate_variant}
        missing = [v for v in (target.previous_variant, target.candidate_variant) if v not in values]
        if missing:
            raise configuration_error("flagd", self._obj(target), f"variants lack {missing}")
        async with self._lock:
            return await asyncio.to_thread(self._ensure_sync, target, dict(values))

    # --- internals -------------------------------------------------------------------------------------------

    def _obj(self, target: Target) -> str:
        return f"{self.path} flag {target.key!r}"

    async def _commit(self) -> None:
        """Apply every pending write, a batch per rewrite of the file, until none is left."""
        async with self._lock:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    outcomes = await asyncio.to_thread(self._set_many_sync, batch)
                except Exception as exc:  # noqa: BLE001 - the file could not be read or replaced: all of them failed
                    for write in batch:
                        if not write.done.done():
                            write.done.set_exception(exc)
                    continue
                except BaseException:  # cancelled (the loop is closing): nobody is left to answer
                    for write in batch + self._pending:
                        write.done.cancel()
                    raise
                for write, outcome in zip(batch, outcomes, strict=True):
                    if write.done.done():
                        continue
                    if isinstance(outcome, BaseException):
                        write.done.set_exception(outcome)
                    else:
                        write.done.set_result(outcome)

    def _set_many_sync(self, batch: list[_Write]) -> list[bool | BaseException]:
        """One read-modify-write of the file for ``batch``: each write's answer, or its own error."""
        with self._file_lock():
            doc = self._read(batch[0].target)
            outcomes: list[bool | BaseException] = []
            for write in batch:
                try:
                    outcomes.append(self._apply(doc, write.target, write.percent, write.key))
                except Exception as exc:  # noqa: BLE001 - a bad target fails its own write, not the others'
                    outcomes.append(exc)
            if any(outcome is True for outcome in outcomes):
                self._write(doc)
            return outcomes

    def _apply(self, doc: dict[str, Any], target: Target, percent: float, key: str) -> bool:
        """Set the split in ``doc``; False when this key already applied this split (nothing to write)."""
        flag = self._flag(doc, target)
        variants = flag.get("variants") or {}
        missing = [v for v in (target.previous_variant, target.candidate_variant) if v not in variants]
        if missing:
            raise configuration_error(
                "flagd", self._obj(target),
                f"the flag has no variant(s) {missing} (it has {sorted(variants)}); fix previous_variant/"
                "candidate_variant in the playbook or the flag file",
            )
        targeting = fractional_targeting(target, percent)
        metadata = flag.setdefault("metadata", {})
        if metadata.get(KEY_FIELD) == key and flag.get("targeting") == targeting:
            return False
        flag["targeting"] = targeting
        # At the ends, defaultVariant agrees with the split, so an evaluation that falls through the
        # fractional buckets (or has no targeting key) still lands on the intended model.
        if percent == 100:
            flag["defaultVariant"] = target.previous_variant
        elif percent == 0:
            flag["defaultVariant"] = target.candidate_variant
        metadata[KEY_FIELD] = key
        metadata[PERCENT_FIELD] = percent
        metadata[WRITTEN_AT_FIELD] = datetime.now(UTC).isoformat()
        return True

    def _ensure_sync(self, target: Target, variants: dict[str, object]) -> bool:
        with self._file_lock():
            if self.path.exists():
                doc = self._read(target)
            else:
                doc = {"$schema": SCHEMA, "flags": {}}
            flags = doc.setdefault("flags", {})
            if target.key in flags:
                return False
            flags[target.key] = {
                "state": "ENABLED",
                "variants": variants,
                "defaultVariant": target.candidate_variant,
                "targeting": fractional_targeting(target, 0),
                "metadata": {},
            }
            self._write(doc)
            return True

    def _read(self, target: Target) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise configuration_error(
                "flagd", self._obj(target), "the flag file does not exist; create it or set UNSHIP_FLAGD_PATH"
            ) from None
        except OSError as exc:
            raise configuration_error("flagd", self._obj(target), f"cannot read the flag file: {exc}") from exc
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise configuration_error("flagd", self._obj(target), f"the flag file is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("flags", {}), dict):
            raise configuration_error("flagd", self._obj(target), "the flag file has no 'flags' object")
        return doc

    def _flag(self, doc: dict[str, Any], target: Target) -> dict[str, Any]:
        flag = doc.get("flags", {}).get(target.key)
        if not isinstance(flag, dict):
            known = sorted(doc.get("flags", {}))
            raise configuration_error(
                "flagd", self._obj(target), f"no such flag in the file (flags there: {known})"
            )
        return flag

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _write(self, doc: dict[str, Any]) -> None:
        data = (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            mode = self.path.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
