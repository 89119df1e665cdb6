import pytest

from curation.redact import redact_text, redact_uri


@pytest.mark.parametrize(
    ("uri", "stored"),
    [
        ("http://user:pass@a.example/x.jpg", "http://a.example/x.jpg"),
        ("https://tok3n@a.example:8443/x.jpg", "https://a.example:8443/x.jpg"),
        ("http://a@b:c@a.example/x.jpg", "http://a.example/x.jpg"),  # the last @ ends userinfo
        ("https://b.s3.amazonaws.com/k.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
         "&X-Amz-Credential=AKIAEXAMPLE%2F20261205&X-Amz-Security-Token=FwoG&X-Amz-Signature=9f86d0",
         "https://b.s3.amazonaws.com/k.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
         "&X-Amz-Credential=REDACTED&X-Amz-Security-Token=REDACTED&X-Amz-Signature=REDACTED"),
        ("https://storage.googleapis.com/b/o.jpg?X-Goog-Signature=abc&X-Goog-Expires=60",
         "https://storage.googleapis.com/b/o.jpg?X-Goog-Signature=REDACTED&X-Goog-Expires=60"),
        ("https://cdn.example/a.jpg?Policy=p&Signature=s&Key-Pair-Id=k",
         "https://cdn.example/a.jpg?Policy=REDACTED&Signature=REDACTED&Key-Pair-Id=REDACTED"),
        ("https://x.blob.core.windows.net/c/a.jpg?sv=2020&sig=abc%3D&se=2026",
         "https://x.blob.core.windows.net/c/a.jpg?sv=2020&sig=REDACTED&se=2026"),
        ("http://a.example/a.jpg?w=640&token=t&api_key=k&apikey=k2&access_token=t2&key=k3",
         "http://a.example/a.jpg?w=640&token=REDACTED&api_key=REDACTED&apikey=REDACTED"
         "&access_token=REDACTED&key=REDACTED"),
        ("http://a.example/a.jpg#access_token=t&state=1",
         "http://a.example/a.jpg#access_token=REDACTED&state=1"),
        ("http://a.example/a.jpg?monkey=1&keyword=cat&page=2",
         "http://a.example/a.jpg?monkey=1&keyword=cat&page=2"),
        ("file:///data/shard.tar#k1.jpg", "file:///data/shard.tar#k1.jpg"),
        ("not a url", "not a url"),
        ("", ""),
    ],
)  # fmt: skip
def test_redact_uri(uri, stored):
    assert redact_uri(uri) == stored


def test_redact_text_finds_urls_inside_messages():
    message = "redirect to http://bob:pw@evil.example/?sig=s3cret (was 'https://a/?token=abc')"
    assert redact_text(message) == (
        "redirect to http://evil.example/?sig=REDACTED (was 'https://a/?token=REDACTED')"
    )


def test_redact_uri_cuts_long_values():
    assert len(redact_uri("http://a.example/" + "x" * 5000, limit=100)) == 100


@pytest.mark.parametrize(
    ("uri", "stored"),
    [  # a signed URL percent-encoded inside another one (image proxies, redirectors)
        ("https://p.example/_next/image?url=https%3A%2F%2Fb.s3.amazonaws.com%2Fk.jpg"
         "%3FX-Amz-Credential%3DAKIA%252F2026%26X-Amz-Signature%3Dab%2Bcd%3D%3D%26w%3D1&w=640",
         "https://p.example/_next/image?url=https%3A%2F%2Fb.s3.amazonaws.com%2Fk.jpg"
         "%3FX-Amz-Credential%3DREDACTED%26X-Amz-Signature%3DREDACTED%26w%3D1&w=640"),
        ("http://h.example/to/http%3A%2F%2Fi.example%2Fa.jpg%3Fsig%3Ds3cret",
         "http://h.example/to/http%3A%2F%2Fi.example%2Fa.jpg%3Fsig%3DREDACTED"),
        ("http://p.example/?u=https%3a%2f%2fbob%3apw%40i.example%2Fa.jpg%3Fw%3D1",
         "http://p.example/?u=https%3a%2f%2fi.example%2Fa.jpg%3Fw%3D1"),
        ("http://p.example/?u=https%253A%252F%252Fi%252Fa%253Ftoken%253Dabc%2526w%253D1",
         "http://p.example/?u=https%253A%252F%252Fi%252Fa%253Ftoken%253DREDACTED%2526w%253D1"),
        ("http://p.example/a%20b.jpg?q=100%25&monkey%3D1", "http://p.example/a%20b.jpg?q=100%25&monkey%3D1"),
    ],
)  # fmt: skip
def test_redact_uri_inside_percent_encoded_urls(uri, stored):
    assert redact_uri(uri) == stored
