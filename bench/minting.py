"""4. Token minting: ``bot.tokens.mint_join_token`` per second against raw HS256.

The floor is what signing alone costs: ``hmac.new(secret, header.payload,
sha256).digest()`` over a signing input of the same length, in the same
process. The ratio is the share of a token's cost that is the signature
(the rest is JSON, base64 and PyJWT's checks). Reported, no target.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

from bench.harness import STREAM_SECRET, Line, Outcome, log
from bot.tokens import mint_join_token, new_jti, new_room_id


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (in blocks of 200 calls)."""
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(200):
            fn()
        n += 200
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def run(quick: bool = False) -> Outcome:
    out = Outcome()
    room, jti, exp = new_room_id(), new_jti(), int(time.time()) + 3600

    def mint() -> str:
        return mint_join_token(
            room_id=room, user_id="UBENCH0001", exp=exp, jti=jti, secret=STREAM_SECRET
        )

    token = mint()
    signing_input = token.rsplit(".", 1)[0].encode("ascii")
    key = STREAM_SECRET.encode("utf-8")

    def sign() -> bytes:
        return hmac.new(key, signing_input, hashlib.sha256).digest()

    out.check(token.count(".") == 2, "mint_join_token did not return a JWT")
    window = 0.1 if quick else 0.6
    rounds = 2 if quick else 5
    mints, signs = [], []
    for _ in range(rounds):  # interleaved, best of each: noise only ever slows a round
        mints.append(rate(mint, window))
        signs.append(rate(sign, window))
    best_mint, best_sign = max(mints), max(signs)
    log(f"tokens: {best_mint:,.0f} mints/s, {best_sign:,.0f} raw HS256/s")
    out.lines.append(
        Line(
            "tokens minted per second",
            best_mint,
            best_sign,
            "/s",
            "raw hmac HS256/s",
            None,
            note=f"{1e6 / best_mint:.1f} us per token",
        )
    )
    return out


if __name__ == "__main__":
    import sys

    result = run(quick="--quick" in sys.argv)
    for line in result.lines:
        print(line.render())
