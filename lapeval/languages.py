"""Languages: one table of what no library knows, langcodes for every other ISO 639 code, and the language
of any lm-eval task.

Users name languages by ISO 639-1 code where one exists (``en``, ``zh``, ``ja``...; ``qu`` is Ayacucho
Quechua as in FLORES ``quy_Latn``), or by any ISO 639-3 code, FLORES-style ``tam_Taml`` tag or English name
(``deu``, ``yo``, ``German``): codes outside lapeval's table are normalised by ``langcodes`` (with
``language-data``), macrolanguage members to their macrolanguage (``arb`` → ``ar``, ``swh`` → ``sw``), and
come back as the shortest ISO 639 code. The table :data:`LANGUAGES` keeps only what no library knows for
the languages lapeval ships data for: FLORES-200 codes, NTREX-128 and TICO-19 file suffixes, XCOPA /
XWinograd config names (XWinograd writes Japanese as ``jp``), INCLUDE language names, fastText lid.176 labels
and native names. :func:`get` accepts any of these spellings.

:func:`task_language` says which language a task evaluates (what ``lang=self`` and a grid's self/cross
split use), in this order: a user mapping (``lang_map``, :class:`LangMap`), the task config's
``metadata.lapeval_language``, lapeval's own task names, lm-eval's multilingual families by their naming
schemes (:data:`FAMILY_RULES`, each checked against lm-eval 0.4.13's task index: see
``docs/task-languages.md``); ``None`` for monolingual tasks that name no language and for cross-lingual
pairs, never a guess.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import dataclass, field
from typing import Mapping

from .errors import LanguageError, LapevalError


@dataclass(frozen=True)
class Language:
    code: str  # ISO 639-1 (or 639-3 where there is none)
    name: str  # English name, as INCLUDE and prompts write it
    flores_code: str | None  # FLORES-200 code (None: lapeval's table does not list this language)
    ntrex: str | None = None  # NTREX-128 file suffix (newstest2019-ref.<x>.txt)
    tico: str | None = None  # TICO-19 file suffix (tico19-test.<x>)
    xcopa: str | None = None  # XCOPA config
    xwinograd: str | None = None  # XWinograd config
    include: str | None = None  # INCLUDE language name
    fasttext: str | None = None  # lid.176 label (without __label__)
    native: str | None = None  # the language's own name, for targeted prompts

    @property
    def flores(self) -> str:
        """The FLORES-200 code; a one-line :class:`LanguageError` for a language outside lapeval's table."""
        if self.flores_code is None:
            raise LanguageError(
                f"no FLORES-200 code known for {self.code} ({self.name}): lapeval lists FLORES codes for "
                f"{', '.join(LANGUAGES)}; use a source that names files by ISO code ({{lang}})")
        return self.flores_code

    @property
    def script(self) -> str:
        """The ISO 15924 script: from the FLORES code, else the likely script langcodes knows."""
        if self.flores_code:
            return self.flores_code.split("_")[1]
        import langcodes

        return langcodes.Language.get(self.code).maximize().script or "Zyyy"


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
    for _spelling in (_lang.code, _lang.flores_code, _lang.xcopa, _lang.xwinograd, _lang.include, _lang.name):
        if _spelling:
            _ALIASES.setdefault(_spelling.lower(), _lang.code)
# spellings the table's codes have in other datasets (langcodes would map some elsewhere: tl → fil, quy stays)
_ALIASES.update({"jp": "ja", "zho_hant": "zh", "cmn": "zh", "quy": "qu", "swh": "sw", "zsm": "ms", "fil": "tl"})
# dataset names no library reads as meant: INCLUDE's "North Macedonian", TokSuite's "Farsi"
_ALIASES.update({"north macedonian": "mk", "farsi": "fa"})

# ISO 639 codes that name no language: undetermined, uncoded, multiple, no linguistic content
_NOT_LANGUAGES = {"und", "mis", "mul", "zxx"}
_CODE_SHAPE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*")
_NAME_SHAPE = re.compile(r"[^\W\d_]+(?:[ '-][^\W\d_]+)*")


def _library_code(spelling: str) -> str | None:
    """The ISO 639 code of a code-shaped spelling (``deu``, ``yo``, ``tam_Taml``, ``zh-CN``), through
    langcodes; macrolanguage members collapse to their macrolanguage. None when it is no language."""
    if not _CODE_SHAPE.fullmatch(spelling):
        return None
    import langcodes

    try:
        tag = langcodes.Language.get(langcodes.standardize_tag(spelling.replace("_", "-"), macro=True))
    except (ValueError, LookupError):  # LanguageTagError is a ValueError
        return None
    code = (tag.language or "").lower()
    if not code or not tag.is_valid() or code in _NOT_LANGUAGES or "qaa" <= code <= "qtz":
        return None
    return _ALIASES.get(code, code)


def _name_code(name: str) -> str | None:
    """The ISO 639-1 code of a language name (English or any other: ``German``, ``Deutsch``), through
    langcodes' name data. Exact names only (langcodes also matches a known name that merely starts the
    text, ``virology`` → Võro), and only languages with an ISO 639-1 code, the ones datasets name in words:
    others are given by code (``tlh``, not ``Klingon``)."""
    name = name.strip()
    if len(name) < 4 or not _NAME_SHAPE.fullmatch(name):
        return None
    import langcodes
    from language_data.names import code_to_names, normalize_name

    try:
        found = langcodes.find(name)
    except LookupError:
        return None
    if not found.language or normalize_name(name) not in {normalize_name(n) for n in code_to_names(found.language).values()}:
        return None
    code = _library_code(found.language)
    return code if code is not None and (len(code) == 2 or code in LANGUAGES) else None


@functools.lru_cache(maxsize=4096)
def _code(spelling: str) -> str | None:
    key = spelling.strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    return _library_code(spelling.strip()) or _name_code(spelling)


def table_code(spelling: str) -> str | None:
    """The table's code for one of its own spellings (``jp``, ``jpn_Jpan``, ``Japanese``), else None: for
    datasets whose codes are not ISO 639 (fastText lid.176's ``als`` is Alemannic)."""
    return _ALIASES.get(str(spelling).strip().lower())


def normalize(code: str) -> str:
    """The canonical code for any spelling: lapeval's table code (ISO 639-1: ``jp``, ``jpn_Jpan``,
    ``Japanese`` → ``ja``), else the shortest ISO 639 code langcodes gives (``deu`` → ``de``, ``yor_Latn``
    → ``yo``, ``ars`` → ``ars``). A one-line :class:`LanguageError` for anything that names no language."""
    found = _code(str(code)) if str(code).strip() else None
    if found is None:
        raise LanguageError(f"unknown language {code!r}: give an ISO 639 code (en, yo, deu), a FLORES code "
                            "(tam_Taml) or an English name (German)")
    return found


@functools.lru_cache(maxsize=1024)
def _library_language(code: str) -> Language:
    import langcodes

    tag = langcodes.Language.get(code)
    name = tag.display_name()
    native = tag.autonym()
    return Language(code, name, None, native=None if native.lower().startswith("unknown") else native)


def get(code: str) -> Language:
    """The language for any spelling (``ja``, ``jp``, ``jpn_Jpan``, ``Japanese``, ``yo``). Languages outside
    lapeval's table have no dataset fields: their ``flores`` raises a one-line :class:`LanguageError`."""
    found = normalize(code)
    return LANGUAGES[found] if found in LANGUAGES else _library_language(found)


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


# ---- user mapping: task name or glob → language -----------------------------------------------------
class LangMapError(LapevalError, ValueError):
    """A ``lang_map`` that cannot be read: one line naming the fix."""


_NO_LANGUAGE = {"none", "-", "null"}


class LangMap:
    """``{task name or fnmatch glob: language}`` for tasks no rule covers (or to override one).

    Written as a dict (Python, grid YAML ``lang_map:``) or, as a ``lape`` model argument (lm-eval splits
    model arguments on commas), as ``PATTERN:LANG`` pairs joined by ``;``:
    ``lang_map=belebele_*:id;kmmlu*:ko;mgsm_en_cot_*:none``. ``none`` says a task has no language (its
    requests run unmodified under ``lang=self``). An exact name wins over globs; globs are tried in order.
    """

    def __init__(self, mapping: Mapping[str, str | None]):
        self.mapping: dict[str, str | None] = {}
        for pattern, lang in mapping.items():
            pattern = str(pattern).strip()
            if not pattern:
                raise LangMapError("lang_map: an empty task pattern: write PATTERN:LANG, e.g. belebele_*:id")
            if lang is None or str(lang).strip().lower() in _NO_LANGUAGE:
                self.mapping[pattern] = None
                continue
            try:
                self.mapping[pattern] = normalize(str(lang))
            except LanguageError:
                raise LangMapError(f"lang_map: {pattern}:{lang}: {lang!r} is no language (use an ISO 639 "
                                   "code such as id, or none)") from None

    @classmethod
    def parse(cls, spec) -> LangMap | None:
        """A :class:`LangMap` from a dict, a ``PATTERN:LANG;...`` string, a LangMap, or None/empty (None)."""
        if spec is None or isinstance(spec, LangMap):
            return spec or None
        if isinstance(spec, Mapping):
            return cls(spec) or None
        if not isinstance(spec, str):
            raise LangMapError(f"lang_map: {spec!r}: give PATTERN:LANG pairs joined by ; (belebele_*:id;xnli_sw:sw)")
        pairs = {}
        for item in filter(None, (p.strip() for p in re.split(r"[;,\s]+", spec))):
            pattern, sep, lang = item.rpartition(":")
            if not sep or not pattern.strip() or not lang.strip():
                raise LangMapError(f"lang_map: {item!r}: write PATTERN:LANG pairs joined by ; (belebele_*:id;xnli_sw:sw)")
            if pattern.strip() in pairs:
                raise LangMapError(f"lang_map: {pattern.strip()} is given twice: give each pattern once")
            pairs[pattern.strip()] = lang.strip()
        return cls(pairs) or None

    def __bool__(self) -> bool:
        return bool(self.mapping)

    def __eq__(self, other) -> bool:
        return isinstance(other, LangMap) and self.mapping == other.mapping

    def __repr__(self) -> str:
        return f"LangMap({self.mapping!r})"

    def lookup(self, task: str) -> tuple[bool, str | None]:
        """(whether a pattern covers ``task``, its language or None)."""
        if task in self.mapping:
            return True, self.mapping[task]
        for pattern, lang in self.mapping.items():
            if fnmatch.fnmatchcase(task, pattern):
                return True, lang
        return False, None

    def to_dict(self) -> dict[str, str | None]:
        return dict(self.mapping)

    def unmatched(self, tasks) -> list[str]:
        """The patterns that cover none of ``tasks`` (task names)."""
        return [p for p in self.mapping if not any(t == p or fnmatch.fnmatchcase(t, p) for t in tasks)]

    def __str__(self) -> str:
        return ";".join(f"{p}:{l or 'none'}" for p, l in self.mapping.items())


# ---- the language of a task --------------------------------------------------------------------------
@dataclass(frozen=True)
class FamilyRule:
    """How one family of task names spells its language: a full-match pattern (on the lower-cased name)
    whose group ``lang`` is an ISO 639 / FLORES-style code (``kind="code"``), an English language name
    (``"name"``), a translation direction whose non-English side counts (``"direction"``, lapeval's own
    ``flores_mt_en-fr``), a pair that counts only when both sides agree (``"pair"``, MLQA's context ×
    question), or no language at all (``"none"``, with ``reason``). ``quirks`` are the dataset's own
    spellings that no library reads as meant (XWinograd ``jp``, PISA ``ch`` = Chinese)."""

    family: str
    pattern: str
    kind: str = "code"
    quirks: Mapping[str, str] = field(default_factory=dict)
    reason: str = ""
    source: str = "family"

    @functools.cached_property
    def regex(self) -> re.Pattern:
        return re.compile(self.pattern)


@dataclass(frozen=True)
class TaskLanguage:
    """What :func:`resolve_task` found: the language (None: none), where from (``lang_map``, ``metadata``,
    ``lapeval``, ``family``, ``none``), the rule's family, why (for None) and where the name spells it."""

    task: str
    language: str | None
    source: str
    family: str | None = None
    reason: str = ""
    span: tuple[int, int] | None = None


_AFRO = ("sib|masakhapos|masakhaner|masakhanews|injongointent|afrisenti|afridiacritics|nollysenti|naijarc"
         "|uhura-arc-easy|openai_mmlu|afrimgsm|afrimgsm_cot|afrimmlu_direct|afrixnli")
_PAIR = r"[a-z]{2,3}(?:_[a-z]{4})?"

# lapeval's own tasks (tasks/): checked before lm-eval's families
LAPEVAL_RULES = [
    FamilyRule("lss", r"lss_(?P<lang>[a-z]{2,3})", source="lapeval"),
    FamilyRule("flores_ppl", r"flores_ppl_(?P<lang>[a-z]{2,3})", source="lapeval"),
    FamilyRule("lang_steer", r"lang_steer_(?P<lang>[a-z]{2,3})", source="lapeval"),
    FamilyRule("flores_mt", r"flores_mt_(?P<lang>[a-z]{2,3}-[a-z]{2,3})", "direction", source="lapeval"),
    FamilyRule("lapeval", r"lapeval_(?:xcopa|xwinograd|include)_(?P<lang>[a-z]{2,3})", source="lapeval"),
]

# tasks that deliberately get no language (before the families: their names also contain codes)
NONE_RULES = [
    FamilyRule("translation", rf"(?:.+_)?(?:flores|ntrex|wmt\d*|iwslt\d*)[_-](?:{_PAIR})-(?:{_PAIR})(?:[_-].+)?", "none",
               reason="a translation pair: two languages, none of them the task's"),
    FamilyRule("translation", r"wmt-ro-en-t5-prompt", "none", reason="a translation pair: two languages, none of them the task's"),
    FamilyRule("translate-test", r"(?:afrimgsm|afrimgsm_cot|afrimmlu|afrixnli|afrixnli_manual)_translate_[a-z]{3}"
                                 r"(?:_prompt_\d+)?", "none",
               reason="translate-test: English machine translations of the named language's documents"),
    FamilyRule("afriqa", r"afriqa_[a-z]{3}_prompt_\d+", "none",
               reason="cross-lingual QA: questions in the named language, passages in English or French"),
]

# lm-eval 0.4.13's multilingual families, each pattern checked against its task index
# (benchmarks/task_language_coverage.py prints what every rule matches)
FAMILY_RULES = [
    FamilyRule("xcopa", r"xcopa_(?P<lang>[a-z]{2})"),
    FamilyRule("xwinograd", r"xwinograd_(?P<lang>[a-z]{2})", quirks={"jp": "ja"}),
    FamilyRule("include", r"include_base_44_(?P<lang>north_macedonian|[a-z]+)(?:_.+)?", "name",
               quirks={"north_macedonian": "mk"}),
    FamilyRule("belebele", r"belebele_(?P<lang>[a-z]{3}_[a-z]{4})"),
    FamilyRule("belebele", r"belebele_(?P<lang>[a-z]{3})_prompt_\d+"),
    FamilyRule("xnli", r"xnli_(?P<lang>[a-z]{2})(?:_native|_mt|_mt_native|_spanish_bench)?", quirks={"va": "ca"}),
    FamilyRule("xstorycloze", r"xstorycloze_(?P<lang>[a-z]{2})"),
    FamilyRule("paws-x", r"paws_(?P<lang>[a-z]{2})(?:_spanish_bench)?"),
    FamilyRule("mgsm", r"mgsm_(?:direct|native_cot|en_cot)_(?P<lang>[a-z]{2})(?:_spanish_bench)?"),
    FamilyRule("xquad", r"xquad_(?P<lang>[a-z]{2})"),
    FamilyRule("tydiqa", r"tydiqa_goldp_(?P<lang>[a-z]{2})"),
    FamilyRule("lambada_multilingual", r"lambada_openai_mt_(?:stablelm_)?(?P<lang>[a-z]{2})"),
    FamilyRule("global_mmlu", r"global_mmlu_(?:full_)?(?P<lang>[a-z]{2,3})(?:_[a-z_]+)?"),
    FamilyRule("mmlu_prox", r"mmlu_prox_(?:lite_)?(?P<lang>[a-z]{2})(?:_[a-z_]+)?"),
    FamilyRule("openai-mmmlu", r"mmmlu_(?P<lang>[a-z]{2}_[a-z]{2})(?:_[a-z_]+)?"),
    FamilyRule("global_piqa", r"global_piqa_(?:parallel|nonparallel)_(?:cloze|generation)_(?P<lang>[a-z]{3}_[a-z]{4})(?:_[a-z]{4})?"),
    FamilyRule("okapi", r"(?:arc|hellaswag|m_mmlu)_(?P<lang>[a-z]{2})"),
    FamilyRule("okapi", r"truthfulqa_(?P<lang>[a-z]{2})(?:_mc1|_mc2|_gen)?", quirks={"va": "ca"}),
    FamilyRule("okapi", r"arc_(?P<lang>[a-z]{2})_(?:easy|challenge)"),
    FamilyRule("mlqa", r"mlqa_(?P<lang>[a-z]{2}_[a-z]{2})", "pair"),
    FamilyRule("multiblimp", r"multiblimp_(?P<lang>[a-z]{3})"),
    FamilyRule("mela", r"mela_(?P<lang>[a-z]{2})"),
    FamilyRule("arc_mt", r"arc_challenge_mt_(?P<lang>[a-z]{2})"),
    FamilyRule("truthfulqa-multi", r"truthfulqa-multi_(?:gen|mc1|mc2)_(?P<lang>[a-z]{2})"),
    FamilyRule("indicxnli", r"indicxnli_(?P<lang>[a-z]{2})"),
    FamilyRule("llama3", r"mmlu_(?P<lang>[a-z]{2})_llama(?:_[a-z_]+)?"),
    FamilyRule("afrobench", rf"(?:{_AFRO})_(?P<lang>[a-z]{{2,3}})_prompt_\d+"),
    FamilyRule("afrobench", r"afrixnli_(?:en|native|manual)_direct_(?P<lang>[a-z]{3})"),
    FamilyRule("afrobench", r"xlsum_(?P<lang>[a-z]+)_prompt_\d+", "name", quirks={"pidgin": "pcm"}),
    FamilyRule("xlsum", r"xlsum_(?P<lang>[a-z]{2})"),
    FamilyRule("toksuite", r"toksuite_(?P<lang>[a-z]+)(?:_.+)?", "name"),
    FamilyRule("crows_pairs", r"crows_pairs_(?P<lang>[a-z]+)(?:_.+)?", "name"),
    FamilyRule("bhs", r"bhs__?(?P<lang>[a-z]+)(?:__.+)?", "name"),
    FamilyRule("pisa", r"pisa_(?P<lang>[a-z]{2})(?:_llm_judged)?", quirks={"ch": "zh"}),
    FamilyRule("eus_exams", r"eus_exams_(?P<lang>es|eu)(?:_[a-z0-9]+)?"),
    FamilyRule("mmlu-redux-spanish", r"mmlu_[a-z_]+_generative_(?P<lang>spanish)", "name"),
    FamilyRule("language benches", r"(?:piqa|openbookqa|wnli|copa|siqa|boolqa|ifeval|eqbench|headqa|careqa|glianorex"
                                   r"|bertaqa)_(?P<lang>[a-z]{2})"),
    FamilyRule("blimp_nl", r"blimp_(?P<lang>nl)(?:__.+)?"),
    FamilyRule("copal_id", r"copal_(?P<lang>id)_(?:colloquial|standard)"),
]


def _metadata_language(task: str, metadata) -> str | None:
    value = metadata.get("lapeval_language") if isinstance(metadata, Mapping) else None
    if value is None or not str(value).strip():
        return None
    try:
        return normalize(str(value))
    except LanguageError:
        raise LanguageError(f"task {task}: metadata.lapeval_language {value!r} is no language (use an ISO 639 "
                            "code such as id)") from None


def _direction(spelling: str) -> str | None:
    """A translation direction ``en-fr`` / ``fr-en``: the non-English side (paper 2 amplifies X's neurons
    for en→X); ``en`` for ``en-en``."""
    sides = [_code(s) for s in spelling.split("-")]
    if None in sides:
        return None
    others = [s for s in sides if s != "en"]
    return others[-1] if others else "en"


def _apply(rule: FamilyRule, task: str) -> TaskLanguage | None:
    """The rule's verdict on ``task``, or None when its pattern does not match."""
    m = rule.regex.fullmatch(task.lower())
    if m is None:
        return None
    if rule.kind == "none":
        return TaskLanguage(task, None, "none", rule.family, rule.reason)
    spelling, span = m.group("lang"), m.span("lang")
    if spelling in rule.quirks:
        code = _code(rule.quirks[spelling])
    elif rule.kind == "direction":
        code = _direction(spelling)
    elif rule.kind == "pair":
        a, b = (_code(s) for s in spelling.split("_"))
        if a is None or a != b:
            return TaskLanguage(task, None, "none", rule.family, "a cross-lingual pair (context and question "
                                "in two languages)", span)
        code = a
    elif rule.kind == "name":
        code = _ALIASES.get(spelling) or _name_code(spelling.replace("_", " "))
    else:
        code = _code(spelling)
    if code is None:
        return TaskLanguage(task, None, "none", rule.family, f"{spelling!r} names no language langcodes knows", span)
    return TaskLanguage(task, code, rule.source, rule.family, "", span)


def resolve_task(task_name: str, metadata: Mapping | None = None, lang_map=None) -> TaskLanguage:
    """The language task ``task_name`` evaluates, with where it came from (see :func:`task_language`)."""
    task = str(task_name)
    lmap = LangMap.parse(lang_map)
    if lmap:
        hit, code = lmap.lookup(task)
        if hit:
            return TaskLanguage(task, code, "lang_map", None, "" if code else "lang_map says none")
    from_metadata = _metadata_language(task, metadata)
    if from_metadata is not None:
        return TaskLanguage(task, from_metadata, "metadata")
    for rule in (*LAPEVAL_RULES, *NONE_RULES, *FAMILY_RULES):
        found = _apply(rule, task)
        if found is not None:
            return found
    return TaskLanguage(task, None, "none", None, "no language in the task's name or metadata")


def task_language(task_name: str, metadata: Mapping | None = None, lang_map=None) -> str | None:
    """The language a task evaluates, for ``lang=self`` routing and a grid's self/cross split.

    In this order: ``lang_map`` (a :class:`LangMap`, dict or ``PATTERN:LANG;...`` string); the task config's
    ``metadata.lapeval_language``; lapeval's own tasks (``lss_id`` → id, ``flores_ppl_sw`` → sw,
    ``lang_steer_fr`` → fr, ``flores_mt_en-fr`` → fr and ``flores_mt_fr-en`` → fr: the non-English side, as
    paper 2 amplifies X's neurons for en→X); lm-eval's multilingual families (:data:`FAMILY_RULES`:
    ``xcopa_id`` → id, ``xwinograd_jp`` → ja, ``include_base_44_indonesian_stem`` → id, ``belebele_tam_Taml``
    → ta, ``xnli_de`` → de, ``global_piqa_parallel_cloze_deu_latn`` → de ...). None for tasks that name no
    language (``arc_easy``, ``hellaswag``) and for cross-lingual pairs (``wmt16-de-en``, ``mlqa_de_en``).
    """
    return resolve_task(task_name, metadata, lang_map).language


_DIRECTION = re.compile(rf"(?:.+_)?(?:flores_mt|flores|ntrex|wmt\d*|iwslt\d*)[_-](?P<src>{_PAIR})-(?P<tgt>{_PAIR})(?:[_-].+)?")


def task_direction(task_name: str, metadata: Mapping | None = None) -> tuple[str, str] | None:
    """(source, target) of a translation task, for the ``src`` / ``tgt`` terms of an intervention: the
    task config's ``metadata.lapeval_source_language`` / ``lapeval_target_language`` when both are given,
    else a translation name (``flores_mt_en-fr`` → (en, fr), ``wmt16-de-en`` → (de, en),
    ``iwslt2017-en-ar`` → (en, ar)); None for any other task."""
    meta = metadata if isinstance(metadata, Mapping) else {}
    src, tgt = meta.get("lapeval_source_language"), meta.get("lapeval_target_language")
    if src and tgt:
        return normalize(str(src)), normalize(str(tgt))
    m = _DIRECTION.fullmatch(str(task_name).lower())
    if m is None:
        return None
    a, b = _code(m.group("src")), _code(m.group("tgt"))
    return None if a is None or b is None else (a, b)


def task_family(task_name: str, metadata: Mapping | None = None, lang_map=None) -> tuple[str, str] | None:
    """(family, column) where the task's name spells its language: ``belebele_ind_Latn`` → (belebele,
    ind_Latn), ``global_mmlu_full_de_law`` → (global_mmlu_full_law, de), ``flores_mt_en-fr`` → (flores_mt,
    en-fr); None when no rule located a language in the name."""
    found = resolve_task(task_name, metadata, lang_map)
    if found.language is None or found.span is None:
        return None
    a, b = found.span
    name = str(task_name)
    head, tail = name[:a].rstrip("_-"), name[b:]
    return (head + tail) or name, name[a:b]
