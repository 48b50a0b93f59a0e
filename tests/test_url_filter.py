"""The ingest URL blocklist: domains with their subdomains, whole URL words, list files."""

from __future__ import annotations

import pytest

from pipeline.url_filter import UrlFilter


def test_domains_block_themselves_and_subdomains_only():
    f = UrlFilter(domains=["example.com", "https://Spam.ORG/path", ".ads.net"])
    assert f.why_blocked("http://example.com/") == "domain example.com"
    assert f.why_blocked("https://www.news.example.com/a?b=1") == "domain example.com"
    assert f.why_blocked("http://spam.org.") == "domain spam.org"
    assert f.why_blocked("http://cdn.ads.net:8080/x") == "domain ads.net"
    assert f.why_blocked("http://badexample.com/") is None
    assert f.why_blocked("http://example.com.evil.io/") is None
    assert f.why_blocked(None) is None and f.why_blocked("not a url") is None


def test_words_match_whole_url_tokens():
    f = UrlFilter(words=["casino", "XXX"])
    assert f.why_blocked("http://a.io/casino-bonus/") == "word casino"
    assert f.why_blocked("http://xxx.a.io/") == "word xxx"
    assert f.why_blocked("http://a.io/occasional/casinos") is None
    assert not UrlFilter() and UrlFilter(words=["x"])


def test_list_files_with_comments(tmp_path):
    domains = tmp_path / "domains.txt"
    domains.write_text("# adult sites\nblocked.example\n\n  other.example  # trailing comment\n")
    words = tmp_path / "words.txt"
    words.write_text("poker\n")
    f = UrlFilter(domain_files=[str(domains)], word_files=[f"file://{words}"])
    assert f.domains == {"blocked.example", "other.example"} and f.words == {"poker"}
    assert f.why_blocked("http://www.other.example/poker") == "domain other.example"
    with pytest.raises(FileNotFoundError, match="blocklist file not found: .*nope.txt"):
        UrlFilter(domain_files=[str(tmp_path / "nope.txt")])
