"""Which releases the fleet runs now that a new bundle has no agreement expectation for.

A device judges a candidate against the expectation the bundle records for what it runs
(:meth:`models.bundle.Manifest.expectation`: the release ``name@version`` and the sha256 of the
variant file it serves). A device running a release the bundle knows nothing of judges the
candidate against the bundle's own FP32 instead — a sound test of the candidate, but not of the
change the operator is making. Publishing such a bundle, or rolling it out to such devices, is
allowed; the answer carries warnings, one per group, release and served variant.

What a device serves is what it last said in its reports (``running.variant``, or the variant of
its ``committed`` report); for a device that never said, the variant the director picks for its
hardware from the running release. Reads only; no rule here refuses anything.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection

from models.bundle import BundleError, Manifest
from models.hardware import HardwareProfile, NoCompatibleVariant, select_variant
from ota_server.errors import RecordNotFound
from ota_server.fleet.director import Catalog
from ota_server.rules import rollouts as ro
from ota_server.storage import store as st

__all__ = ["Served", "warnings"]


@dataclass(frozen=True)
class Served:
    """What a set of devices of one group runs: a release of the model and the variant file."""

    group: str
    release: str  # "name@version"
    counter: int | None
    variant: str | None  # None: unknown (a release this server does not hold, or no variant fits)
    sha256: str | None


def warnings(
    conn: Connection,
    manifest: Manifest,
    *,
    group: str | None = None,
    tags: Sequence[str] = (),
    hardware_classes: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """One warning per (group, release, served variant) the bundle has no expectation for, over
    the devices that run another release of the same model (of ``group`` and the selection given
    by ``tags`` / ``hardware_classes``, or of the whole fleet)."""
    devices = [
        d
        for d in st.devices_running(conn, manifest.name, group=group)
        if d["running_version"] != manifest.version and ro.is_selected(d, tags=tags, hardware_classes=hardware_classes)
    ]
    counts: Counter[Served] = Counter(_ServedLookup(conn, manifest.name).of(d) for d in devices)
    out = []
    for served, n in sorted(counts.items(), key=lambda kv: (kv[0].group, kv[0].counter or 0, kv[0].variant or "")):
        if not _covered(manifest, served):
            out.append(
                {
                    "group": served.group,
                    "devices": n,
                    "release": served.release,
                    "counter": served.counter,
                    "variant": served.variant,
                    "sha256": served.sha256,
                    "message": _message(served, n),
                }
            )
    return out


def _covered(manifest: Manifest, served: Served) -> bool:
    if served.sha256 is None:  # the file is unknown: any expectation for the release will do
        return any(e.baseline == served.release for e in manifest.expectations)
    return any((e.baseline, e.baseline_sha256) == (served.release, served.sha256) for e in manifest.expectations)


def _message(served: Served, n: int) -> str:
    what = f"{served.variant}, sha256 {served.sha256[:12]}…" if served.variant and served.sha256 else "variant unknown"
    who, verb, they = (f"{n} devices", "run", "they") if n != 1 else ("1 device", "runs", "it")
    return (
        f"{who} in group {served.group} {verb} {served.release} ({what}): the bundle has no agreement "
        f"expectation for it; {they} will judge it against its own FP32"
    )


class _ServedLookup:
    """The served variant of each device, resolving the releases' files once per release and the
    director's pick once per (release, hardware class)."""

    def __init__(self, conn: Connection, name: str) -> None:
        self.conn = conn
        self.name = name
        self.catalog = Catalog()
        self.picks: dict[tuple[int, str], str | None] = {}

    def of(self, device: Mapping[str, Any]) -> Served:
        release, counter = f"{self.name}@{device['running_version']}", device["running_release"]
        if counter is None:
            return Served(device["group_name"], release, None, None, None)
        try:
            _, manifest, files = self.catalog.release(self.conn, counter)
        except RecordNotFound:
            return Served(device["group_name"], release, counter, None, None)
        variant = device["running_variant"] or self._pick(device, counter, manifest)
        sha = next((f["sha256"] for f in files if f["variant"] == variant), None) if variant else None
        return Served(device["group_name"], release, counter, variant if sha else None, sha)

    def _pick(self, device: Mapping[str, Any], counter: int, manifest: Manifest) -> str | None:
        key = (counter, device["hardware_class"])
        if key not in self.picks:
            try:
                profile = HardwareProfile.from_dict(st.get_device(self.conn, device["id"])["hardware"])
                self.picks[key] = select_variant(manifest, profile).id
            except (NoCompatibleVariant, BundleError):
                self.picks[key] = None
        return self.picks[key]
