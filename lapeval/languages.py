"""One table of language codes, used everywhere in lapeval.

Users name languages by ISO 639-1 code where one exists (``en``, ``zh``, ``ja``...; ``qu`` is Ayacucho
Quechua as in FLORES ``quy_Latn``). Each dataset has its own spelling: FLORES-200 codes, NTREX-128 and
TICO-19 file suffixes, XCOPA / XWinograd config names (XWinograd writes Japanese as ``jp``), INCLUDE
language names and fastText lid.176 labels. :func:`get` accepts any of these spellings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import LanguageError


@dataclass(frozen=True)
class Language:
    code: str  # ISO 639-1 (or 639-3 where there is none)
    name: str  # English name, as INCLUDE and prompts write it
    flores: str  # FLORES-200 code
    ntrex: str | None = None  # NTREX-128 file suffix (newstest2019-ref.<x>.txt)
    tico: str | None = None  # TICO-19 file suffix (tico19-test.<x>)
    xcopa: str | None = None  # XCOPA config
    xwinograd: str | None = None  # XWinograd config
    include: str | None = None  # INCLUDE language name
    fasttext: str | None = None  # lid.176 label (without __label__)
    native: str | None = None  # the language's own name, for targeted prompts

    @property
    def script(self) -> str:
        return self.flores.split("_")[1]


_TABLE = [
    Language("en", "English", "eng_Latn", "eng", "en", None, "en", None, "en", "English"),
    Language("nl", "Dutch", "nld_Latn", "nld", None, None, None, "Dutch", "nl", "Nederlands"),
    Language("id", "Indonesian", "ind_Latn", "ind", "id", "id", None, "Indonesian", "id", "Bahasa Indonesia"),
    Language("ms", "Malay", "zsm_Latn", "msa", "ms", None, None, "Malay", "ms", "Bahasa Melayu"),
    Language("vi", "Vietnamese", "vie_Latn", "vie", None, "vi", None, "Vietnamese", "vi", "Tiếng Việt"),
    Language("ja", "Japanese", "jpn_Jpan", "jpn", None, None, "jp", "Japanese", "ja", "日本語"),
    Language("zh", "Chinese", "zho_Hans", "zho-CN", "zh", "zh", "zh", "Chinese", "zh", "中文"),
    Language("fr", "French", "fra_Latn", "fra", "fr", None, "fr", "French", "fr", "Français"),
    Language("pt", "Portuguese", "por_Latn", "por", "pt_BR", None, "pt", "Portuguese", "pt", "Português"),
    Language("ru", "Russian", "rus_Cyrl", "rus", "ru", None, "ru", "Russian", "ru", "Русский"),
    Language("et", "Estonian", "est_Latn", "est", None, "et", None, "Estonian", "et", "Eesti"),
    Language("ht", "Haitian Creole", "hat_Latn", None, None, "ht", None, None, "ht", "Kreyòl ayisyen"),
    Language("it", "Italian", "ita_Latn", "ita", None, "it", None, "Italian", "it", "Italiano"),
    Language("qu", "Quechua", "quy_Latn", None, None, "qu", None, None, "qu", "Runasimi"),
    Language("sw", "Swahili", "swh_Latn", "swa", "sw", "sw", None, None, "sw", "Kiswahili"),
    Language("ta", "Tamil", "tam_Taml", "tam", "ta", "ta", None, "Tamil", "ta", "தமிழ்"),
    Language("th", "Thai", "tha_Thai", "tha", None, "th", None, None, "th", "ไทย"),
    Language("tr", "Turkish", "tur_Latn", "tur", None, "tr", None, "Turkish", "tr", "Türkçe"),
    Language("es", "Spanish", "spa_Latn", "spa", "es_LA", None, None, "Spanish", "es", "Español"),
    Language("de", "German", "deu_Latn", "deu", None, None, None, "German", "de", "Deutsch"),
    Language("ar", "Arabic", "arb_Arab", "arb", "ar", None, None, "Arabic", "ar", "العربية"),
    Language("ko", "Korean", "kor_Hang", "kor", None, None, None, "Korean", "ko", "한국어"),
    Language("hi", "Hindi", "hin_Deva", "hin", "hi", None, None, "Hindi", "hi", "हिन्दी"),
    Language("bn", "Bengali", "ben_Beng", "ben", "bn", None, None, "Bengali", "bn", "বাংলা"),
    Language("fa", "Persian", "pes_Arab", "fas", "fa", None, None, "Persian", "fa", "فارسی"),
    Language("ur", "Urdu", "urd_Arab", "urd", "ur", None, None, "Urdu", "ur", "اردو"),
    Language("tl", "Tagalog", "tgl_Latn", "fil", "tl", None, None, "Tagalog", "tl", "Tagalog"),
    Language("pl", "Polish", "pol_Latn", "pol", None, None, None, "Polish", "pl", "Polski"),
    Language("uk", "Ukrainian", "ukr_Cyrl", "ukr", None, None, None, "Ukrainian", "uk", "Українська"),
    Language("el", "Greek", "ell_Grek", "ell", None, None, None, "Greek", "el", "Ελληνικά"),
    Language("he", "Hebrew", "heb_Hebr", "heb", None, None, None, "Hebrew", "he", "עברית"),
    Language("fi", "Finnish", "fin_Latn", "fin", None, None, None, "Finnish", "fi", "Suomi"),
]

LANGUAGES: dict[str, Language] = {lang.code: lang for lang in _TABLE}

# the 18 languages of Rahmanisa et al. (2025), in their LAPE index order
PAPER2_LANGUAGES = ["en", "nl", "id", "ms", "vi", "ja", "zh", "fr", "pt", "ru", "et", "ht", "it", "qu", "sw", "ta", "th", "tr"]
# the 7 languages of Tang et al. (2024), in the order of their released neuron files
PAPER1_LANGUAGES = ["en", "zh", "fr", "es", "vi", "id", "ja"]

_ALIASES: dict[str, str] = {}
for _lang in _TABLE:
    for _spelling in (_lang.code, _lang.flores, _lang.xcopa, _lang.xwinograd, _lang.include, _lang.name):
        if _spelling:
            _ALIASES.setdefault(_spelling.lower(), _lang.code)
_ALIASES.update({"jp": "ja", "zho_hant": "zh", "cmn": "zh", "quy": "qu", "swh": "sw", "zsm": "ms", "fil": "tl"})


def get(code: str) -> Language:
    """The language for any spelling in the table (``ja``, ``jp``, ``jpn_Jpan``, ``Japanese``)."""
    key = code.strip().lower()
    if key in _ALIASES:
        return LANGUAGES[_ALIASES[key]]
    raise LanguageError(f"unknown language {code!r}: use one of {', '.join(LANGUAGES)} (or a FLORES code)")


def normalize(code: str) -> str:
    """The canonical (ISO 639-1) code for any spelling."""
    return get(code).code


_SEPARATORS = re.compile(r"[,+|;\s]+")


def split_list(spec) -> list[str]:
    """The one splitter of language lists: ``"en,zh"``, ``"en+zh"`` (lm-eval model arguments, which lm-eval
    splits on commas), ``"en zh"``, or a list → the items as written, empty ones dropped."""
    if isinstance(spec, (list, tuple)):
        return [str(s).strip() for s in spec if str(s).strip()]
    return [p for p in _SEPARATORS.split(str(spec).strip()) if p]


def parse_list(spec: str | list[str]) -> list[str]:
    """``"en,zh, ja"`` / ``"en+zh"`` (or a list) → canonical codes, in order, with duplicates refused."""
    codes = [normalize(s) for s in split_list(spec)]
    dupes = sorted({c for c in codes if codes.count(c) > 1})
    if dupes:
        raise LanguageError(f"language list names {', '.join(dupes)} twice: give each language once")
    if not codes:
        raise LanguageError("empty language list: give comma-separated codes such as en,zh,ja")
    return codes


def task_language(task_name: str) -> str | None:
    """The language a task evaluates, from its name, for ``lang=self`` routing.

    ``xcopa_id`` → id, ``xwinograd_jp`` → ja, ``include_base_44_indonesian_stem`` → id, ``lss_id`` → id,
    ``flores_ppl_sw`` → sw, ``lang_steer_fr`` → fr, ``flores_mt_en-fr`` → fr and ``flores_mt_fr-en`` → fr
    (the non-English side: paper 2 amplifies X's neurons for en→X). None when no part names a language.
    """
    name = task_name.lower()
    if "-" in name:  # a translation pair: the non-English side
        pair = name.rsplit("_", 1)[-1].split("-")
        others = [p for p in pair if _ALIASES.get(p) and _ALIASES[p] != "en"]
        if others:
            return _ALIASES[others[-1]]
        if pair and all(_ALIASES.get(p) == "en" for p in pair):
            return "en"
    parts = name.split("_")
    for part in reversed(parts):  # the last part that spells a language, by code or by name
        if part in _ALIASES and (len(part) > 2 or part != parts[0]):
            return _ALIASES[part]
    return None
