"""`images --filter`: docker's image list filters.

    dangling=true|false    images no name points at (true wins when both are given, as in docker)
    label=KEY[=VALUE]      every label filter must hold
    reference=PATTERN      any pattern matches a name (Go's path.Match, with or without the tag)
    before=IMAGE           created strictly before IMAGE (every before= must hold)
    since=IMAGE            created strictly after IMAGE (every since= must hold)

Different keys are ANDed. Several `before`/`since` values all apply, as in current docker, so the
oldest `before` and the newest `since` decide.
"""

from __future__ import annotations

import datetime
import re

from builder.errors import BuildError
from builder.plumbing.records import dataclass
from builder.store import Store

from .inventory import ImageRecord, find_image

FILTER_KEYS = ("before", "dangling", "label", "reference", "since")
_OLDEST = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)


class InvalidFilter(BuildError):
    """A --filter docker would refuse."""


@dataclass(frozen=True)
class ImageFilters:
    dangling: bool | None = None
    labels: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    before: tuple[str, ...] = ()
    since: tuple[str, ...] = ()


def parse_image_filters(values: list[str], repository: str | None = None) -> ImageFilters:
    """`--filter KEY=VALUE` arguments (and `images REPOSITORY`, a reference filter) as ImageFilters."""
    found: dict[str, list[str]] = {key: [] for key in FILTER_KEYS}
    for item in values:
        key, sep, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep:
            raise InvalidFilter(f"bad format of filter (expected name=value): {item}")
        if key not in found:
            raise InvalidFilter(f"invalid filter '{key}'")
        if key == "dangling" and value.lower() not in ("true", "false", "1", "0"):
            raise InvalidFilter(f"invalid filter 'dangling={value}'")
        if key == "reference":
            check_pattern(value)
        found[key].append(value)
    if repository:
        check_pattern(repository)
        found["reference"].append(repository)
    dangling = None
    if found["dangling"]:
        dangling = any(v.lower() in ("true", "1") for v in found["dangling"])
    return ImageFilters(dangling, tuple(found["label"]), tuple(found["reference"]),
                        tuple(found["before"]), tuple(found["since"]))


def select_images(store: Store, records: list[ImageRecord], filters: ImageFilters) -> list[ImageRecord]:
    """The RECORDS that pass FILTERS; a before/since image that does not exist is ImageNotFound."""
    newer_than = [t for t in (_created(store, name) for name in filters.since) if t is not None]
    older_than = [t for t in (_created(store, name) for name in filters.before) if t is not None]
    selected = []
    for record in records:
        created = record.created or _OLDEST
        if any(created <= t for t in newer_than) or any(created >= t for t in older_than):
            continue
        if filters.dangling is not None and record.dangling != filters.dangling:
            continue
        if not _has_labels(record, filters.labels):
            continue
        if filters.references and not any(reference_matches(p, name) for p in filters.references
                                           for name in record.repo_tags + record.repo_digests):
            continue
        selected.append(record)
    return selected


def _created(store: Store, name: str) -> datetime.datetime | None:
    return find_image(store, name).created


def _has_labels(record: ImageRecord, wanted: tuple[str, ...]) -> bool:
    labels = dict(record.image.config.config.labels)
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def reference_matches(pattern: str, familiar_name: str) -> bool:
    """docker's reference filter: Go's path.Match on the familiar name with its tag, then without."""
    regex = check_pattern(pattern)
    name = re.split(r"[:@](?=[^/]*$)", familiar_name, maxsplit=1)[0]
    return bool(regex.match(familiar_name) or regex.match(name))


def check_pattern(pattern: str) -> re.Pattern:
    from builder.context import go_match_regex
    from builder.errors import SolveError

    try:
        return go_match_regex(pattern)
    except SolveError:
        raise InvalidFilter(f"invalid filter 'reference={pattern}': syntax error in pattern") from None
