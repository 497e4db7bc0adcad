"""Which catalog serves a creative, and which aspects to look for, in what order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase

from fulfiller.config import RouteConfig
from fulfiller.events import SourceRequest


def route_for(routes: Sequence[RouteConfig], project_slug: str | None, code: str) -> str | None:
    """The catalog name of the first route whose project and code globs match, else None."""
    for route in routes:
        if route.project is not None and route.project != project_slug:
            continue
        if any(fnmatchcase(code, glob) for glob in route.codes):
            return route.catalog
    return None


def aspect_order(req: SourceRequest, preferences: Mapping[str, Sequence[str]]) -> list[str]:
    """OSS: the aspect asked. AFS: our preference for the family, then the rest in the platform's order.

    A preferred aspect the platform did not accept is never tried: the callback
    would be rejected as aspect_ratio_not_accepted_for_<family>.
    """
    if req.aspect:
        return [req.aspect]
    accepted = list(req.accepted_aspects)
    preferred = [a for a in preferences.get(req.family or "", ()) if a in accepted]
    return list(dict.fromkeys(preferred + accepted))


def no_match_reason(req: SourceRequest, mismatched: Mapping[str, str] | None = None) -> str:
    """The skip reason the platform shows operators when nothing fits: each accepted aspect once, in its
    order, and each file refused because its picture is another aspect (``mismatched``: object -> measured)."""
    if req.aspect:
        if mismatched:
            return f"aspect_mismatch:asked={req.aspect},measured={next(iter(mismatched.values()))}"
        return f"no_match:aspect={req.aspect}"
    refused = "".join(f";aspect_mismatch:{obj}={aspect}" for obj, aspect in (mismatched or {}).items())
    return f"no_match:acceptedAspects=[{','.join(dict.fromkeys(req.accepted_aspects))}]{refused}"
