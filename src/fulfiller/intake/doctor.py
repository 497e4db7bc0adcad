"""The signature doctor: why a delivery's signature is refused, and what fixes it.

``diagnose`` first verifies the request exactly as the receiver does. When that
refuses it, it tries what operators most often get wrong, each on its own: the
configured secrets written differently, the same JSON serialised differently,
another algorithm or encoding, the other signing mode, a timestamp outside the
tolerance. The answer is a reason code from SPEC's table and advice in plain
words. A timestamp or missing-timestamp refusal is the answer whenever the
receiver gives it; otherwise a variant that verifies is the answer (the fix),
ahead of the header problem it caused (a Standard Webhooks delivery has no
``x-outpost-signature`` header); with none, the header problem or
``wrong_secret`` is.

Advice names secrets by their index in ``receiver.secrets`` and headers by
name: it never holds a secret, a signature value or the body.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from fulfiller.config import ReceiverConfig
from fulfiller.intake.outpost import ALGORITHMS, ENCODINGS, HeaderNames, OutpostScheme
from fulfiller.intake.refusal import Refusal, SignatureError
from fulfiller.intake.signing import Verifier, describe
from fulfiller.intake.templates import Moment

__all__ = ["CODES", "OK", "Diagnosis", "diagnose"]

OK = "ok"
SECRET_VARIANT, BODY_MODIFIED, OTHER_ALGORITHM, OTHER_MODE, WRONG_SECRET = (
    "secret_variant", "body_modified", "other_algorithm", "other_mode", "wrong_secret")
# SPEC's order: the first code that applies is the answer.
CODES = (Refusal.NO_SIGNATURE_HEADER.value, Refusal.MALFORMED_SIGNATURE.value,
         Refusal.TIMESTAMP_OUTSIDE_TOLERANCE.value, Refusal.MISSING_TIMESTAMP.value,
         SECRET_VARIANT, BODY_MODIFIED, OTHER_ALGORITHM, OTHER_MODE, WRONG_SECRET)
_TIMING = (Refusal.TIMESTAMP_OUTSIDE_TOLERANCE, Refusal.MISSING_TIMESTAMP)
_WHSEC = "whsec_"
_SIGNATURE_LIKE = re.compile(r"sig")


@dataclass(frozen=True)
class Diagnosis:
    """``code`` is the answer (``ok`` when the request verifies), ``codes`` every one that applies (the
    answer first), ``advice`` what was found and how to fix it."""

    code: str
    codes: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.code == OK


def diagnose(body: bytes, headers: Mapping[str, str], receiver: ReceiverConfig,
             now: float | None = None) -> Diagnosis:
    """Why ``receiver`` refuses this request (or ``ok``); needs ``receiver.secrets``."""
    headers = {name.lower(): value for name, value in headers.items()}
    now = time.time() if now is None else now
    try:
        receiver.verifier().verify(body, headers, now)
    except SignatureError as exc:
        refusal = exc.code
    else:
        return Diagnosis(OK, [OK], [_which_secret(body, headers, receiver)])
    doctor = _Doctor(body, headers, receiver)
    found: dict[str, list[str]] = {}
    if refusal in _TIMING:
        found[refusal.value] = doctor.timing(refusal, now)
    for code, check in ((SECRET_VARIANT, doctor.secret_variants), (BODY_MODIFIED, doctor.body_variants),
                        (OTHER_ALGORITHM, doctor.other_algorithms), (OTHER_MODE, doctor.other_modes)):
        if advice := check():
            found[code] = advice
    if refusal in (Refusal.NO_SIGNATURE_HEADER, Refusal.MALFORMED_SIGNATURE):
        found[refusal.value] = doctor.header_problem(refusal)
    elif not set(found) - {r.value for r in _TIMING} and not doctor.verifies_relaxed():
        found[WRONG_SECRET] = [_wrong_secret(receiver)]
    codes = [c for c in CODES if c in found]
    structural = {Refusal.NO_SIGNATURE_HEADER.value, Refusal.MALFORMED_SIGNATURE.value}
    answer = next((c for c in codes if c not in structural), codes[0])
    codes = [answer] + [c for c in codes if c != answer]
    return Diagnosis(answer, codes, [line for c in codes for line in found[c]])


def _which_secret(body: bytes, headers: Mapping[str, str], receiver: ReceiverConfig) -> str:
    doctor = _Doctor(body, headers, receiver)
    for i, key in enumerate(doctor.keys):
        if doctor.passes([key]):
            rotated = " (the previous secret: remove it once the rotation is over)" if i else ""
            return f"the signature verifies with receiver.secrets[{i}]{rotated}"
    return "the signature verifies"


def _wrong_secret(receiver: ReceiverConfig) -> str:
    held = ", ".join(f"receiver.secrets[{i}]" for i in range(len(receiver.secrets)))
    return (f"no configured secret ({held}) signed it, in any spelling, algorithm or mode tried: copy the "
            "destination's current secret from Outpost as issued; during a rotation keep the previous one too")


def _decoded(secret: str) -> bytes | None:
    """The base64 part of a secret (after any ``whsec_``), decoded; None when it is not base64."""
    b64 = secret.removeprefix(_WHSEC).strip()
    try:
        return base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True) or None
    except (binascii.Error, ValueError):
        return None


class _Doctor:
    """One request and the receiver's settings; each check answers advice lines, empty when it finds nothing.

    Checks ignore the clock and ``require_timestamp`` (those are ``timing``'s), so each finds its own cause.
    """

    def __init__(self, body: bytes, headers: Mapping[str, str], receiver: ReceiverConfig) -> None:
        self.body, self.headers = body, headers
        self.receiver = receiver.model_copy(update={"timestamp_tolerance_s": 0, "require_timestamp": False})
        self.mode, self.prefix, self.tolerance_s = receiver.mode, receiver.prefix, receiver.timestamp_tolerance_s
        self.scheme = self.receiver.scheme()
        self.keys = [self._key(s) for s in receiver.secrets]

    def _key(self, secret: str) -> bytes:
        return (_decoded(secret) or b"") if self.mode == "standard" else secret.encode("utf-8")

    def passes(self, keys: Sequence[bytes], *, body: bytes | None = None, mode: str | None = None,
               scheme: OutpostScheme | None = None, prefix: str | None = None) -> bool:
        """Whether one of ``keys`` signed the request, read with these settings (the receiver's by default)."""
        keys = [k for k in keys if k]
        body = self.body if body is None else body
        try:
            if (mode or self.mode) == "standard":
                # Any key is a Standard Webhooks secret once written as whsec_<base64>.
                secrets = [_WHSEC + base64.b64encode(k).decode("ascii") for k in keys]
                Verifier("standard", secrets, prefix or self.prefix, 0).verify(body, self.headers)
            else:
                (scheme or self.scheme).verify(body, self.headers, keys, 0)
        except (SignatureError, ValueError):  # ValueError: no keys, or content the template cannot render
            return False
        return True

    def verifies_relaxed(self) -> bool:
        return self.passes(self.keys)

    def timing(self, refusal: Refusal, now: float) -> list[str]:
        after = " (otherwise it verifies)" if self.verifies_relaxed() else ""
        if refusal == Refusal.MISSING_TIMESTAMP:
            return [f"the signature signs no timestamp and receiver.require_timestamp is set{after}: sign with a "
                    "timestamped template in Outpost (t={{.Timestamp.Unix}}), or turn require_timestamp off"]
        signed = self._signed_time()
        if signed is None:
            return [f"the signed timestamp is outside the tolerance{after}"]
        off = int(now - signed)
        when = f"{off} seconds ago" if off >= 0 else f"{-off} seconds in the future"
        return [f"signed {when}, beyond timestamp_tolerance_s ({self.tolerance_s} s){after}: a clock is "
                "off, or timestamp_tolerance_s is too small"]

    def _signed_time(self) -> int | None:
        """The timestamp the request carries, read where the configured scheme reads it."""
        if self.mode == "standard":
            raw = self.headers.get(f"{self.prefix}timestamp", "")
            return int(raw) if raw.strip().isdigit() else None
        value = self.headers.get(self.scheme.names.signature, "")
        if self.scheme.documented:
            m = re.search(r"(?:^|,)\s*t\s*=\s*([0-9]{1,12})", value, re.IGNORECASE)
            return int(m.group(1)) if m else None
        fields = self.scheme.header.read(value)
        if fields and fields.moment:
            return fields.moment.unix
        try:
            return Moment.from_header(self.headers.get(self.scheme.names.timestamp or "", "")).unix
        except ValueError:
            return None

    def secret_variants(self) -> list[str]:
        advice = []
        for i, secret in enumerate(self.receiver.secrets):
            for key, how in self._spellings(secret):
                if key != self.keys[i] and self.passes([key]):
                    advice.append(f"the secret in receiver.secrets[{i}] verifies {how}")
                    break
        return advice

    def _spellings(self, secret: str) -> Iterator[tuple[bytes, str]]:
        if self.mode == "standard":
            yield secret.encode("utf-8"), ("when used as written, not base64-decoded: the sender keys on the "
                                           "whole string, as Outpost's default mode does (mode: outpost?)")
            return
        if secret.startswith(_WHSEC):
            yield secret[len(_WHSEC):].encode("utf-8"), ("without its whsec_ prefix: the sender keys on the part "
                                                         "after whsec_; remove the prefix")
        else:
            yield (_WHSEC + secret).encode("utf-8"), ("when its whsec_ prefix is kept: Outpost uses the whole "
                                                       "string as the key; write the secret as issued")
        if (decoded := _decoded(secret)) is not None:
            yield decoded, ("when its base64 part is decoded: the sender keys on the decoded bytes, as Standard "
                            "Webhooks does (mode: standard?)")

    def body_variants(self) -> list[str]:
        try:
            data = json.loads(self.body)
            variants = [json.dumps(data, separators=separators, sort_keys=sort_keys,
                                   ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")
                        for separators in ((",", ":"), (", ", ": ")) for sort_keys in (False, True)
                        for ensure_ascii in (True, False)]
        except (ValueError, RecursionError):  # not JSON, or nested deeper than json reads
            return []
        for variant in variants:
            if variant != self.body and self.passes(self.keys, body=variant):
                return ["it verifies against the same JSON serialised differently (spaces, key order or escaping): "
                        "something between Outpost and this receiver (a proxy, a framework) re-encoded the body; "
                        "pass the raw bytes through"]
        return []

    def other_algorithms(self) -> list[str]:
        if self.mode != "outpost":
            return []
        for algorithm in ALGORITHMS:
            for encoding in ENCODINGS:
                if (algorithm, encoding) == (self.receiver.signature_algorithm, self.receiver.signature_encoding):
                    continue
                scheme = self.receiver.model_copy(update={"signature_algorithm": algorithm,
                                                          "signature_encoding": encoding}).scheme()
                if self.passes(self.keys, scheme=scheme):
                    return [f"it verifies with {algorithm}/{encoding}: set receiver.signature_algorithm: "
                            f"{algorithm} and receiver.signature_encoding: {encoding}, as Outpost is configured"]
        return []

    def other_modes(self) -> list[str]:
        secrets = self.receiver.secrets
        raw = [s.encode("utf-8") for s in secrets]
        decoded = [_decoded(s) or b"" for s in secrets]
        if self.mode == "outpost":
            for prefix in dict.fromkeys(("webhook-", self.prefix)):
                if self.passes(decoded + raw, mode="standard", prefix=prefix):
                    pinned = "" if prefix == "webhook-" else f" and header_prefix: {prefix}"
                    return [f"this is a Standard Webhooks delivery ({prefix}signature) and receiver.mode is "
                            f"outpost: set mode: standard{pinned}, or switch Outpost's mode"]
            return []
        for prefix in dict.fromkeys(("x-outpost-", self.prefix)):
            scheme = OutpostScheme(HeaderNames.resolve(prefix))
            if self.passes(raw + decoded, mode="outpost", scheme=scheme):
                return [f"this is an Outpost default-mode delivery ({prefix}signature) and receiver.mode is "
                        "standard: set mode: outpost, or switch Outpost to Standard Webhooks mode"]
        return []

    def header_problem(self, refusal: Refusal) -> list[str]:
        name = self.scheme.names.signature if self.mode == "outpost" else f"{self.prefix}signature"
        if refusal == Refusal.MALFORMED_SIGNATURE:
            shapes = "; ".join(describe(self.mode, self.prefix, self.scheme))
            return [f"the {name} header (or a header it needs) does not have the configured shape: {shapes}"]
        others = [h for h in self.headers if h != name and _SIGNATURE_LIKE.search(h)]
        if not others:
            return [f"no {name} header, and no signature-like header: is the request from Outpost at all, "
                    "or did a proxy drop the header?"]
        hints = [f"{h} (Standard Webhooks mode?)" if h.startswith("webhook-") else f"{h} (another prefix?)"
                 for h in others]
        advice = [f"no {name} header; signature-like headers present: {', '.join(hints)}"]
        for other in others:
            renamed = self._renamed(other) if self.mode == "outpost" else None
            if renamed is not None and self.passes(self.keys, scheme=renamed):
                advice.append(f"it verifies with the signature in {other}: set receiver.signature_header: {other}"
                              " (or header_prefix to Outpost's prefix)")
        return advice

    def _renamed(self, signature_header: str) -> OutpostScheme | None:
        try:
            return self.receiver.model_copy(update={"signature_header": signature_header}).scheme()
        except ValueError:
            return None
