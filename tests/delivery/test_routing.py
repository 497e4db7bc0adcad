"""Which catalog serves a creative, which aspects are tried in what order, and the skip reason."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fulfiller.config import RouteConfig
from fulfiller.delivery.routing import aspect_order, no_match_reason, route_for
from fulfiller.events import Coordinates, SourceRequest

PREFERENCES = {"feed": ["4x5", "1x1", "3x4"], "story_reel": ["9x16"]}


def request(*, aspect: str | None = None, family: str | None = None, accepted: tuple[str, ...] = (),
            code: str = "HRT-1212", slug: str | None = "hearty") -> SourceRequest:
    return SourceRequest(
        coords=Coordinates("019d928c", code, 2, "en"), project_slug=slug, kind="video", aspect=aspect,
        family=family, accepted_aspects=accepted, upload_url="https://x.r2.cloudflarestorage.com/k",
        storage_key="fb-external/019d928c/HRT-1212/v2/en/feed.video", expires_at=datetime.now(UTC),
        callback_url="https://api.trigger.dev/api/v1/waitpoints/tokens/waitpoint_abc/complete",
    )


ROUTES = [
    RouteConfig(project="hearty", codes=["HRT-*"], catalog="hearty-drive"),
    RouteConfig(codes=["HRT-9*", "LEGACY-?"], catalog="archive"),
    RouteConfig(project="other", codes=["*"], catalog="other-s3"),
    RouteConfig(codes=["*"], catalog="default"),
]


@pytest.mark.parametrize(
    ("slug", "code", "catalog"),
    [
        ("hearty", "HRT-1212", "hearty-drive"),  # project and code match
        ("hearty", "HRT-9000", "hearty-drive"),  # first match wins over a later, narrower route
        ("zesty", "HRT-9000", "archive"),  # the project route does not apply to another project
        (None, "HRT-9000", "archive"),  # an event without a slug only matches routes without a project
        ("zesty", "LEGACY-7", "archive"),
        ("zesty", "LEGACY-77", "default"),  # ? is exactly one character
        ("other", "ANY-1", "other-s3"),
        ("zesty", "hrt-1212", "default"),  # globs are case sensitive
    ],
)
def test_route_for_first_match_wins(slug: str | None, code: str, catalog: str) -> None:
    assert route_for(ROUTES, slug, code) == catalog


def test_route_for_none_when_nothing_matches() -> None:
    routes = [RouteConfig(codes=["HRT-*"], catalog="drive"), RouteConfig(project="p", codes=["*"], catalog="s3")]
    assert route_for(routes, "q", "ZZZ-1") is None
    assert route_for(routes, None, "ZZZ-1") is None
    assert route_for([], "p", "HRT-1") is None


def test_oss_tries_only_the_aspect_asked() -> None:
    assert aspect_order(request(aspect="9x16"), PREFERENCES) == ["9x16"]
    # Even an aspect no preference lists: OSS is a commitment.
    assert aspect_order(request(aspect="2x3"), PREFERENCES) == ["2x3"]


def test_afs_tries_our_preference_first_then_the_rest_in_the_platforms_order() -> None:
    req = request(family="feed", accepted=("1x1", "3x4", "4x5"))
    assert aspect_order(req, PREFERENCES) == ["4x5", "1x1", "3x4"]
    partial = {"feed": ["3x4"]}
    assert aspect_order(req, partial) == ["3x4", "1x1", "4x5"]


def test_afs_never_tries_a_preferred_aspect_the_platform_did_not_accept() -> None:
    req = request(family="feed", accepted=("1x1", "4x5"))
    assert aspect_order(req, {"feed": ["9x16", "3x4", "4x5"]}) == ["4x5", "1x1"]
    story = request(family="story_reel", accepted=("9x16",))
    assert aspect_order(story, {"story_reel": ["4x5"]}) == ["9x16"]


def test_afs_without_a_preference_uses_the_platforms_order() -> None:
    req = request(family="carousel", accepted=("1x1", "4x5"))
    assert aspect_order(req, PREFERENCES) == ["1x1", "4x5"]
    assert aspect_order(req, {}) == ["1x1", "4x5"]


def test_afs_order_has_no_duplicates() -> None:
    req = request(family="feed", accepted=("1x1", "4x5", "1x1"))
    assert aspect_order(req, {"feed": ["4x5", "4x5"]}) == ["4x5", "1x1"]


def test_no_match_reason() -> None:
    assert no_match_reason(request(aspect="9x16")) == "no_match:aspect=9x16"
    # The platform's own list, in its order (as its documentation's example shows).
    feed = request(family="feed", accepted=("1x1", "3x4", "4x5"))
    assert no_match_reason(feed) == "no_match:acceptedAspects=[1x1,3x4,4x5]"
    story = request(family="story_reel", accepted=("9x16",))
    assert no_match_reason(story) == "no_match:acceptedAspects=[9x16]"


def test_no_match_reason_names_each_accepted_aspect_once() -> None:
    repeated = request(family="feed", accepted=("1x1", "4x5", "1x1") * 10_000)
    assert no_match_reason(repeated) == "no_match:acceptedAspects=[1x1,4x5]"
