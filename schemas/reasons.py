"""Stages and rejection reason codes: one enumeration for the whole dataset.

Every input that does not end up in a shard gets exactly one rejection row naming the stage
that dropped it and one of these reasons. Analysts group by them, so values are stable
strings: add new members, never rename existing ones.
"""

from enum import StrEnum


class Stage(StrEnum):
    SOURCE = "source"  # reading the input lists, prefixes and tars
    FETCH = "fetch"  # HTTP / S3 / local read of the bytes
    VALIDATE = "validate"  # decoding and cheap geometric prefilters
    PREFILTER = "prefilter"  # user-supplied classifiers (watermark, text, artistic, ...)
    DETECT = "detect"  # person detector and the Sapiens keep rule
    DEDUP = "dedup"  # exact, pixel, perceptual and semantic duplicates


class Reason(StrEnum):
    # source
    MALFORMED_INPUT = "malformed_input"  # row without a usable URL, unparsable line
    DUPLICATE_INPUT = "duplicate_input"  # the same source listed more than once
    REFUSED_SCHEME = "refused_scheme"  # a file:// or s3:// entry inside a URL list
    # fetch
    UNSUPPORTED_SCHEME = "unsupported_scheme"
    FORBIDDEN_ADDRESS = "forbidden_address"  # private/loopback/link-local, refused by default
    CONNECTION_ERROR = "connection_error"
    TIMEOUT = "timeout"
    HTTP_ERROR = "http_error"  # 4xx other than 429
    SERVER_ERROR = "server_error"  # 5xx still failing after retries
    RATE_LIMITED = "rate_limited"  # 429 still failing after retries
    TOO_MANY_REDIRECTS = "too_many_redirects"
    TOO_LARGE = "too_large"  # body above the configured maximum
    TRUNCATED_BODY = "truncated_body"  # fewer bytes than Content-Length announced
    BAD_CONTENT_TYPE = "bad_content_type"  # e.g. text/html
    OPTED_OUT = "opted_out"  # X-Robots-Tag noai / noimageai / noindex / noimageindex
    READ_ERROR = "read_error"  # local file or S3 object could not be read
    # validate
    NOT_AN_IMAGE = "not_an_image"  # Pillow does not recognise the bytes
    CORRUPT_IMAGE = "corrupt_image"  # recognised but fails to decode
    TRUNCATED_IMAGE = "truncated_image"
    DECOMPRESSION_BOMB = "decompression_bomb"  # more pixels than the configured limit
    UNSUPPORTED_FORMAT = "unsupported_format"  # decodable but not a format we ship
    ANIMATED = "animated"
    TOO_SMALL = "too_small"  # short side under the configured minimum
    BAD_ASPECT_RATIO = "bad_aspect_ratio"
    # prefilter
    PREFILTER_LABEL = "prefilter_label"  # a classifier flagged a dropped label
    # detect
    NO_PERSON = "no_person"
    PERSON_LOW_SCORE = "person_low_score"  # persons found, none above the score threshold
    PERSON_TOO_SMALL = "person_too_small"  # confident persons, none large enough
    TOO_FEW_PERSONS = "too_few_persons"  # fewer qualifying persons than the minimum (> 1)
    TOO_MANY_PERSONS = "too_many_persons"
    DETECT_ERROR = "detect_error"  # the detector failed on this image
    # dedup
    DUPLICATE_EXACT = "duplicate_exact"  # same bytes (sha256)
    DUPLICATE_PIXELS = "duplicate_pixels"  # same decoded pixels, other encoding
    DUPLICATE_NEAR = "duplicate_near"  # perceptual hash within the Hamming radius
    DUPLICATE_SEMANTIC = "duplicate_semantic"  # embedding cosine above the threshold
    DUPLICATE_PREVIOUS_RELEASE = "duplicate_previous_release"  # held by --dedup-against


REASON_STAGE: dict[Reason, Stage] = {}
for _stage, _names in {
    Stage.SOURCE: ("MALFORMED_INPUT", "DUPLICATE_INPUT", "REFUSED_SCHEME"),
    Stage.FETCH: [
        "UNSUPPORTED_SCHEME",
        "FORBIDDEN_ADDRESS",
        "CONNECTION_ERROR",
        "TIMEOUT",
        "HTTP_ERROR",
        "SERVER_ERROR",
        "RATE_LIMITED",
        "TOO_MANY_REDIRECTS",
        "TOO_LARGE",
        "TRUNCATED_BODY",
        "BAD_CONTENT_TYPE",
        "OPTED_OUT",
        "READ_ERROR",
    ],
    Stage.VALIDATE: [
        "NOT_AN_IMAGE",
        "CORRUPT_IMAGE",
        "TRUNCATED_IMAGE",
        "DECOMPRESSION_BOMB",
        "UNSUPPORTED_FORMAT",
        "ANIMATED",
        "TOO_SMALL",
        "BAD_ASPECT_RATIO",
    ],
    Stage.PREFILTER: ("PREFILTER_LABEL",),
    Stage.DETECT: [
        "NO_PERSON",
        "PERSON_LOW_SCORE",
        "PERSON_TOO_SMALL",
        "TOO_FEW_PERSONS",
        "TOO_MANY_PERSONS",
        "DETECT_ERROR",
    ],
    Stage.DEDUP: [
        "DUPLICATE_EXACT",
        "DUPLICATE_PIXELS",
        "DUPLICATE_NEAR",
        "DUPLICATE_SEMANTIC",
        "DUPLICATE_PREVIOUS_RELEASE",
    ],
}.items():
    for _name in _names:
        REASON_STAGE[Reason[_name]] = _stage
assert set(REASON_STAGE) == set(Reason), "every reason belongs to exactly one stage"
