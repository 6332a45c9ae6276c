"""Caption text cleaning before T5 tokenisation, as LlamaGen's T5 embedder does it (language/t5.py, from PixArt).

``clean_caption`` lower-cases and strips URLs, HTML, handles, CJK blocks, ids, file names, shop boilerplate and odd
punctuation; ``preprocess`` applies it twice, as the original did for both the training features and the prompts.
The regular expressions are the original's (they are the behaviour); the order is the original's order.
Needs ``ftfy`` and ``beautifulsoup4`` (imported on first use).
"""
from __future__ import annotations

import html
import re
import urllib.parse

_URL_TLDS = r"(?:com|co|ru|net|org|edu|gov|it)"
_BAD_PUNCT = r"[#®•©™&@·º½¾¿¡§~\)\(\]\[\}\{\|\\\/\*]{1,}"
_DASHES = (r"[\u002D\u058A\u05BE\u1400\u1806\u2010-\u2015\u2E17\u2E1A\u2E3A\u2E3B\u2E40\u301C\u3030\u30A0"
           r"\uFE31\uFE32\uFE58\uFE63\uFF0D]+")
_CJK_BLOCKS = (r"\u31c0-\u31ef", r"\u31f0-\u31ff", r"\u3200-\u32ff", r"\u3300-\u33ff", r"\u3400-\u4dbf",
               r"\u4dc0-\u4dff", r"\u4e00-\u9fff")
_FILE_TYPES = r"(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)"

# (pattern, replacement), applied in order: before the HTML step, after it, and after ftfy's text repair
_URLS = [(r"\b((?:https?:(?:\/{1,3}|[a-zA-Z0-9%])|[a-zA-Z0-9.\-]+[.]" + _URL_TLDS + r"[\w/-]*\b\/?(?!@)))", ""),
         (r"\b((?:www:(?:\/{1,3}|[a-zA-Z0-9%])|[a-zA-Z0-9.\-]+[.]" + _URL_TLDS + r"[\w/-]*\b\/?(?!@)))", "")]
_AFTER_HTML = [(r"@[\w\d]+\b", "")] + [(f"[{block}]+", "") for block in _CJK_BLOCKS] + [
    (_DASHES, "-"), (r"[`´«»“”¨]", '"'), (r"[‘’]", "'"), (r"&quot;?", ""), (r"&amp", ""),
    (r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " "),        # IP addresses
    (r"\d:\d\d\s+$", ""),                                 # article ids
    (r"\\n", " "),                                        # a literal backslash-n
    (r"#\d{1,3}\b", ""), (r"#\d{5,}\b", ""), (r"\b\d{6,}\b", ""),
    (r"[\S]+\." + _FILE_TYPES, ""),                       # file names
    (r"[\"\']{2,}", r'"'), (r"[\.]{2,}", r" "), (_BAD_PUNCT, r" "), (r"\s+\.\s+", r" ")]
_AFTER_REPAIR = [
    (r"\b[a-zA-Z]{1,3}\d{3,15}\b", ""), (r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", ""), (r"\b\d+[a-zA-Z]+\d+\b", ""),
    (r"(worldwide\s+)?(free\s+)?shipping", ""), (r"(free\s)?download(\sfree)?", ""),
    (r"\bclick\b\s(?:for|on)\s\w+", ""), (r"\b" + _FILE_TYPES + r"(\simage[s]?)?", ""), (r"\bpage\s+\d+\b", ""),
    (r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", r" "),
    (r"\b\d+\.?\d*[xх×]\d+\.?\d*\b", ""),                 # sizes like 1920x1080
    (r"\b\s+\:\s+", r": "), (r"(\D[,\./])\b", r"\1 "), (r"\s+", " "),
    (r"^[\"\']([\w\W]+)[\"\']$", r"\1"), (r"^[\'\_,\-\:;]", r""), (r"[\'\_,\-\:\-\+]$", r""), (r"^\.\S+$", "")]


def _apply(text: str, rules: list[tuple[str, str]]) -> str:
    for pattern, replacement in rules:   # re caches the compiled patterns
        text = re.sub(pattern, replacement, text)
    return text


def _repair(text: str) -> str:
    import ftfy
    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def clean_caption(caption: str) -> str:
    from bs4 import BeautifulSoup
    text = urllib.parse.unquote_plus(str(caption)).strip().lower()
    text = re.sub("<person>", "person", text)
    text = BeautifulSoup(_apply(text, _URLS), features="html.parser").text
    text = _apply(text, _AFTER_HTML)
    if len(re.findall(r"(?:\-|\_)", text)) > 3:          # this-is-a-slug / this_is_a_slug
        text = re.sub(r"(?:\-|\_)", " ", text)
    return _apply(_repair(text), _AFTER_REPAIR).strip()


def preprocess(caption: str) -> str:
    """The text the original tokenised: ``clean_caption`` applied twice."""
    return clean_caption(clean_caption(caption))
