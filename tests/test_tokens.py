"""Join tokens, room ids and Circle links (bot/tokens.py), as AMS and a shell see them."""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit

import jwt
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from bot.tokens import ROOM_ID_RE, circle_link, mint_join_token, new_jti, new_room_id

SECRET = "s" * 40


def test_token_claims_are_exactly_the_designs():
    token = mint_join_token(
        room_id="r1", user_id="UALICE01", exp=2_000_000_000, jti="j", secret=SECRET
    )
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    # No iat/nbf: AMS checks them with zero leeway, so clock skew would refuse fresh links.
    assert claims == {
        "streamId": "r1",
        "type": "publish",
        "exp": 2_000_000_000,
        "sub": "UALICE01",
        "jti": "j",
    }


def test_room_ids_are_unguessable_and_never_look_like_an_option():
    ids = {new_room_id() for _ in range(5000)}
    assert len(ids) == 5000
    for room_id in ids:
        assert ROOM_ID_RE.fullmatch(room_id)
        assert len(room_id) == 22  # 128 random bits, URL-safe base64
        assert room_id[0].isalnum(), room_id
    assert new_jti() != new_jti()


def test_a_room_id_is_taken_by_a_click_argument_as_is():
    """The CI failure that found it: `meetbot rooms end -Xy...` was an unknown option."""
    import click

    @click.command()
    @click.argument("ids", nargs=-1)
    def echo(ids: tuple[str, ...]) -> None:
        click.echo(" ".join(ids))

    ids = [new_room_id() for _ in range(300)]
    result = CliRunner().invoke(echo, ids)
    assert result.exit_code == 0, result.output
    assert result.output.split() == ids


@given(st.text(max_size=100))
def test_any_display_name_keeps_the_link_one_token_and_one_name(name):
    link = circle_link("https://ams.example.com/", "Conference", "room1", "t.o.k", name)
    parts = urlsplit(link)
    assert parts.path == "/Conference/room1"
    # Circle URL-decodes the whole query and then splits on & and =.
    pairs = [p.split("=", 1) for p in unquote(parts.query).split("&")]
    assert pairs[0] == ["token", "t.o.k"]
    assert len(pairs) <= 2
    if len(pairs) == 2:
        assert pairs[1][0] == "streamName" and 0 < len(pairs[1][1]) <= 64
        assert dict(parse_qsl(parts.query))["streamName"] == pairs[1][1]
